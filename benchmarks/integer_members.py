"""Integer members — each exported member of a Fashion-MNIST family as torch (fake quantization)
against its integer ONNX model on the whole test set, onnxruntime CPU latency (batch 1, one
thread) of the integer model against the same member lowered in float, and file size against
``weight_bytes``.

    python benchmarks/integer_members.py --ckpt <search.ckpt> --export <dir> --out <dir>

``--ckpt`` exports the family into ``--export`` first (members, BN recalibration as `hwnas
export` does); without it an existing export is read. Writes ``integer_members.json`` and
``integer_members.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy import load_member, load_weight_quant, lower_member  # noqa: E402
from deploy.member_file import relower_member  # noqa: E402


def session(model, threads: int = 1, config: dict | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def test_set(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    from nas.data.splits import FashionMNISTDataModule

    dm = FashionMNISTDataModule(data_dir=data_dir, batch_size=1000)
    dm.setup("test")
    xs, ys = zip(*dm.test_dataloader(), strict=True)
    return torch.cat(xs), torch.cat(ys)


def interleaved_latency(sessions: dict[str, ort.InferenceSession], x: np.ndarray,
                        rounds: int = 30, per_round: int = 20) -> dict[str, list[float]]:
    """Per round and session, the mean ms of ``per_round`` batch-1 runs; the sessions take
    turns inside each round (the order alternating) so machine noise hits both alike."""
    names = list(sessions)
    for s in sessions.values():  # warm-up
        for _ in range(per_round):
            s.run(None, {"input": x})
    out = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            s = sessions[n]
            start = time.perf_counter()
            for _ in range(per_round):
                s.run(None, {"input": x})
            out[n].append((time.perf_counter() - start) / per_round * 1e3)
    return out


def evaluate(member_dir: Path, x: torch.Tensor, y: torch.Tensor, rounds: int) -> dict:
    meta = json.loads((member_dir / "config.json").read_text())
    static = load_member(member_dir)
    integer = session(str(member_dir / "model.onnx"), config=meta["onnx"].get("session_config"))
    floating = session(lower_member(static, load_weight_quant(member_dir),
                                    meta["input_shape"], integer=False))
    torch_pred, int_pred = [], []
    with torch.no_grad():
        for xb in x.split(1000):
            torch_pred.append(static(xb)[-1].argmax(1))
            int_pred.append(torch.from_numpy(integer.run(None, {"input": xb.numpy()})[-1]
                                             ).argmax(1))
    tp, ip = torch.cat(torch_pred), torch.cat(int_pred)
    times = interleaved_latency({"integer": integer, "float": floating}, x[:1].numpy(), rounds)
    ratios = [i / f for i, f in zip(times["integer"], times["float"], strict=True)]
    bits = sorted({(la["weight_bits"], la["act_bits"]) for la in meta["layers"]
                   if la["name"].startswith("stages.")})
    return {
        "family": member_dir.parents[1].name, "name": meta["name"],
        "bits": [f"w{w}a{a}" for w, a in bits], "config": meta["config"],
        "torch_top1": float((tp == y).double().mean()) * 100,
        "onnx_top1": float((ip == y).double().mean()) * 100,
        "argmax_agreement": float((tp == ip).double().mean()) * 100,
        "integer_ms": statistics.median(times["integer"]),
        "float_ms": statistics.median(times["float"]),
        "integer_over_float": statistics.median(ratios),
        "integer_ops": meta["onnx"]["integer_ops"],
        "onnx_bytes": meta["files"]["model.onnx"], "weight_bytes": meta["weight_bytes"],
        "model_pt_bytes": meta["files"]["model.pt"],
        "table_weight_bytes": meta["costs"].get("weight_bytes"),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['name']}\n{'/'.join(r['bits'])}" for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(11, 0.8 * len(rows)), 4))
    pos = np.arange(len(rows))
    a.bar(pos - 0.2, [r["torch_top1"] for r in rows], 0.4, label="torch (fake quant)")
    a.bar(pos + 0.2, [r["onnx_top1"] for r in rows], 0.4, label="integer ONNX")
    lo = min(min(r["torch_top1"], r["onnx_top1"]) for r in rows)
    a.set_ylim(lo - 3, 100)
    a.set_xticks(pos, names, fontsize=7)
    a.set_ylabel("test top-1 (%)")
    a.legend(fontsize=8)
    a.set_title("accuracy, whole Fashion-MNIST test set")
    b.bar(pos, [r["integer_over_float"] for r in rows])
    b.axhline(0.6, color="k", ls="--", lw=1, label="goal at 8 bits (0.6×)")
    b.axhline(1.0, color="grey", lw=0.8)
    b.set_xticks(pos, names, fontsize=7)
    b.set_ylabel("integer ÷ float latency")
    b.set_title("onnxruntime CPU, batch 1, one thread")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="family export directory")
    p.add_argument("--ckpt", default=None, help="search checkpoint: export the family first")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--bits", default="8,4",
                   help="also export the family's members with every stage at these weight and "
                        "activation bits (comma-separated; '' for none)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST root (default: system)")
    p.add_argument("--rounds", type=int, default=30, help="interleaved latency rounds")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--relower", action="store_true",
                   help="write each member's model.onnx again with this hwnas's lowering")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    export = Path(args.export)
    if args.ckpt:
        from nas.family.export import export_family, make_datamodule
        from nas.search import load_search

        search = load_search(args.ckpt)
        space = search.search_space
        dm = make_datamodule("fmnist", space, 128, args.data_dir)
        family = export_family(search, export, dm, members=args.members, progress=False).family
        for b in [int(v) for v in args.bits.split(",") if v]:
            at_bits = [m.config.replace(**{f"stage{i}__{k}": b for i in
                                            range(1, len(space.stages) + 1)
                                            for k in ("wbits", "abits")})
                       for m in family.members]
            export_family(search, export.with_name(f"{export.name}-w{b}a{b}"), dm,
                          configs=at_bits, progress=False)
    x, y = test_set(args.data_dir)
    rows = []
    dirs = [export, *(export.with_name(f"{export.name}-w{b}a{b}")
                      for b in [int(v) for v in args.bits.split(",") if v])]
    for member_dir in (m for d in dirs if d.is_dir() for m in sorted((d / "members").iterdir())):
        if args.relower:
            relower_member(member_dir)
        rows.append(evaluate(member_dir, x, y, args.rounds))
        r = rows[-1]
        print(f"{r['family']}/{r['name']} {'/'.join(r['bits'])}: top-1 torch {r['torch_top1']:.2f} onnx "
              f"{r['onnx_top1']:.2f} agree {r['argmax_agreement']:.2f}% latency int "
              f"{r['integer_ms']:.3f} ms float {r['float_ms']:.3f} ms "
              f"(×{r['integer_over_float']:.2f}); onnx {r['onnx_bytes']} B, weights "
              f"{r['weight_bytes']} B", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"figure": "integer_members", "command": " ".join(sys.argv),
           "date": time.strftime("%Y-%m-%d"), "onnxruntime": ort.__version__,
           "torch": torch.__version__, "test_samples": len(y), "members": rows}
    (out / "integer_members.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot(rows, out / "integer_members.png")
    worst = max(abs(r["torch_top1"] - r["onnx_top1"]) for r in rows)
    agree = min(r["argmax_agreement"] for r in rows)
    print(f"{len(rows)} members: worst top-1 difference {worst:.2f} pp (goal <= 0.2), lowest "
          f"argmax agreement {agree:.2f}% (goal >= 99.5); wrote {out}/integer_members.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
