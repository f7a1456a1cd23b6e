"""The Pareto front of accuracy against cost, written as ``pareto.json`` and ``pareto.png``.

A record is one evaluated config (a family member, or an extra sampled config): its costs per
metric, accuracy per exit and measured latency. A record is on the front of a metric when no
other record is at most as costly and at least as accurate, and strictly better in one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supernet.io import write_atomic

MEASURED = "measured_latency_ms"


def pareto_flags(costs: Sequence[float], accuracies: Sequence[float]) -> list[bool]:
    """For each point (cost to minimise, accuracy to maximise): is it non-dominated?"""
    points = list(zip(costs, accuracies, strict=True))
    return [not any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for c2, a2 in points)
            for c, a in points]


def accuracy_of(record: dict[str, Any]) -> float:
    """A config's accuracy: that of its deepest exit (the answer when no exit is taken early)."""
    return float(record["accuracy"][-1])


def cost_of(record: dict[str, Any], metric: str) -> float | None:
    if metric == MEASURED:
        return record.get(MEASURED)
    return record["costs"].get(metric)


def mark_front(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``record["on_front"][metric]`` for every table metric and the measured latency."""
    metrics = sorted(set.intersection(*(set(r["costs"]) for r in records))) if records else []
    if records and all(r.get(MEASURED) is not None for r in records):
        metrics.append(MEASURED)
    for r in records:
        r["on_front"] = {}
    for m in metrics:
        flags = pareto_flags([cost_of(r, m) for r in records], [accuracy_of(r) for r in records])
        for r, flag in zip(records, flags, strict=True):
            r["on_front"][m] = flag
    return records


def write_pareto_json(records: list[dict[str, Any]], path: Path, **meta: Any) -> Path:
    """``{"meta": …, "records": […]}`` with every record's front flags."""
    doc = {"meta": meta, "records": mark_front(records)}
    return write_atomic(path, lambda p: p.write_text(json.dumps(doc, indent=1) + "\n"))


def budget_lines(records: list[dict[str, Any]]) -> dict[str, list[tuple[float, str]]]:
    """Per metric, the user budgets (value, picked member) that records were picked for;
    labels read ``"latency_ms<=2"`` (other labels, such as ``"shipped"``, are not budgets)."""
    lines: dict[str, list[tuple[float, str]]] = {}
    for r in records:
        for label in r.get("budgets", []):
            m, sep, value = label.partition("<=")
            if sep:
                lines.setdefault(m, []).append((float(value), r["name"]))
    return lines


def budget_summary(records: list[dict[str, Any]]) -> str:
    """For each user budget, the member picked, its cost and its accuracy, on one line:
    ``"latency_ms<=2 → m3 (1.93, 0.965x, acc 0.812)"`` joined by ``"; "``, after the member
    the search shipped (``"shipped m2 (acc 0.801)"``) when the family has it."""
    by_name = {r["name"]: r for r in records}
    parts = [f"shipped {r['name']} (acc {accuracy_of(r):.3f})" for r in records
             if "shipped" in r.get("budgets", [])]
    for metric, picks in budget_lines(records).items():
        for value, name in sorted(picks):
            cost = by_name[name]["costs"][metric]
            parts.append(f"{metric}<={value:g} → {name} ({cost:.4g}, {cost / value:.3f}x, "
                         f"acc {accuracy_of(by_name[name]):.3f})")
    return "; ".join(parts)


def plot_pareto(records: list[dict[str, Any]], path: Path,
                metric: str = "latency_ms") -> Path:
    """Accuracy against cost, one panel per axis: the table's ``metric`` (the axis the search
    and the budgets use: each budget a dashed line, its picked member starred) and, when the
    members were timed, the latency measured on this machine — the two can disagree, so they
    are never mixed on one axis."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    mark_front(records)
    axes_metrics = [metric] + ([MEASURED] if all(r.get(MEASURED) is not None for r in records)
                               else [])
    fig = Figure(figsize=(6.0 * len(axes_metrics), 4.4))
    axes = fig.subplots(1, len(axes_metrics), squeeze=False)
    picks = budget_lines(records).get(metric, [])
    picked = {name for _, name in picks}
    samples = [r for r in records if r.get("kind") == "sample"]
    members = [r for r in records if r.get("kind") != "sample"]
    for ax, m in zip(axes[0], axes_metrics, strict=True):
        if samples:
            ax.scatter([cost_of(r, m) for r in samples], [accuracy_of(r) for r in samples],
                       s=14, c="0.7", label="sampled configs")
        ax.plot([cost_of(r, m) for r in members], [accuracy_of(r) for r in members], "o-",
                c="tab:blue", ms=5, lw=1, alpha=0.6, label="nested family")
        for r in members:
            ax.annotate(r["name"], (cost_of(r, m), accuracy_of(r)), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        front = sorted((cost_of(r, m), accuracy_of(r)) for r in records if r["on_front"].get(m))
        if front:
            ax.step(*zip(*front, strict=True), where="post", c="tab:red", lw=1.5,
                    label="Pareto front")
            ax.scatter(*zip(*front, strict=True), s=40, facecolors="none", edgecolors="tab:red")
        chosen = [r for r in members if r["name"] in picked]
        if chosen:
            ax.scatter([cost_of(r, m) for r in chosen], [accuracy_of(r) for r in chosen],
                       marker="*", s=160, c="tab:orange", zorder=3, label="picked for a budget")
        if m == metric:
            for i, (value, name) in enumerate(sorted(picks)):
                ax.axvline(value, ls="--", c="tab:orange", lw=1,
                           label="budget" if i == 0 else None)
                ax.annotate(f"{metric} ≤ {value:g} → {name}", (value, 0.02), rotation=90,
                            xycoords=("data", "axes fraction"), fontsize=7, ha="right")
            ax.set_xlabel(f"{metric} from the cost table (the axis the budgets use)")
        else:
            ax.set_xlabel("latency measured on this machine (ms, batch 1)")
        ax.set_ylabel("top-1 accuracy (deepest exit)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()

    def save(p: Path) -> None:
        fig.savefig(p, dpi=110, format="png")

    write_atomic(path, save)
    return path


def format_table(records: list[dict[str, Any]], metric: str = "latency_ms") -> str:
    """A fixed-width text table of the records, one line each, cheapest first; a member picked
    for a budget (or shipped by the search) is labelled after its front mark."""
    mark_front(records)
    n_exits = max(len(r["accuracy"]) for r in records)
    head = (f"{'name':<6} {'kind':<7} {metric:>12} {'measured ms':>11} "
            + " ".join(f"{'acc@' + str(i + 1):>7}" for i in range(n_exits)) + "  front")
    lines = [head, "-" * len(head)]
    for r in sorted(records, key=lambda r: cost_of(r, metric)):
        measured = r.get(MEASURED)
        accs = [f"{a:7.3f}" for a in r["accuracy"]] + [" " * 7] * (n_exits - len(r["accuracy"]))
        lines.append(f"{r['name']:<6} {r.get('kind', 'member'):<7} "
                     f"{cost_of(r, metric):12.5g} "
                     f"{'-' if measured is None else f'{measured:.4f}':>11} "
                     + " ".join(accs) + ("  *" if r["on_front"].get(metric) else "   ")
                     + (f"  {', '.join(r['budgets'])}" if r.get("budgets") else ""))
    return "\n".join(line.rstrip() for line in lines)
