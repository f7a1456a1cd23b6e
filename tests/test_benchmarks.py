"""The benchmark scripts: quick mode writes every figure's JSON with finite numbers."""

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import FIGURES
from benchmarks.run_all import main

# figure -> headline keys it must report
HEADLINES = {
    "supernet_overhead": {"relaxed_over_plain_time", "search_over_plain_time",
                          "relaxed_over_plain_peak_memory", "search_over_plain_peak_memory",
                          "plain_step_ms"},
    "one_vs_many": {"worst_gap_pp", "mean_gap_pp", "family_over_largest_wall",
                    "family_over_sum_wall", "family_over_largest_macs"},
    "baselines": {"baselines", "baselines_matched", "mean_family_minus_baseline_pp"},
    "early_exit": {"full_accuracy", "acc_at_0.9", "cost_over_full_at_0.9"},
    "budget_adherence": {f"{loss}_{k}" for loss in ("lagrangian", "hinge", "fbnet")
                         for k in ("shipped_min_ratio", "shipped_max_ratio", "shipped_in_band",
                                   "argmax_min_ratio", "argmax_max_ratio", "runs")},
    "cost_fidelity": {"mape_pct", "kendall_tau", "within_10pct", "corrected_mape_pct",
                      "switch_us", "load_ms", "load_over_switch"},
}


def finite_numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in finite_numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in finite_numbers(x)]
    return [obj] if isinstance(obj, int | float) and not isinstance(obj, bool) else []


def check_figure(out: Path, name: str) -> dict:
    doc = json.loads((out / f"{name}.json").read_text())
    assert doc["figure"] == name and doc["mode"] == "quick"
    assert {"nproc", "cpu", "torch"} <= set(doc["machine"])
    assert doc["date"] and doc["command"]
    headline = doc["headline"]
    assert HEADLINES[name] <= set(headline), f"{name}: missing {HEADLINES[name] - set(headline)}"
    for key in HEADLINES[name]:
        assert isinstance(headline[key], float | int) and math.isfinite(headline[key]), key
    assert all(math.isfinite(v) for v in finite_numbers(doc["results"]))
    return doc


@pytest.mark.slow
def test_quick_overhead_figure(tmp_path):
    """A smoke test of one figure through run_all (seconds)."""
    assert main(["--quick", "--out", str(tmp_path), "--only", "supernet_overhead"]) == 0
    doc = check_figure(tmp_path, "supernet_overhead")
    times = doc["results"]["median_ms"]
    assert set(times) == {"search", "relaxed", "plain"} and min(times.values()) > 0
    assert (tmp_path / "supernet_overhead.png").stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["figures"]) == ["supernet_overhead"]


def test_unknown_figure_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--out", str(tmp_path), "--only", "nope"])
    assert "unknown figures" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_all_writes_every_figure(tmp_path):
    """The whole quick suite (about a minute on one core)."""
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    for name in FIGURES:
        check_figure(tmp_path, name)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["figures"]) == set(FIGURES)
    assert all("error" not in entry for entry in summary["figures"].values())
    adherence = json.loads((tmp_path / "budget_adherence.json").read_text())["headline"]
    for loss in ("lagrangian", "hinge", "fbnet"):  # what ships never exceeds its ceiling
        assert adherence[f"{loss}_shipped_max_ratio"] <= 1.0
    twins = json.loads((tmp_path / "one_vs_many.json").read_text())["results"]["members"]
    assert len(twins) >= 2 and all(0 <= r["scratch_accuracy"] <= 1 for r in twins)
    # the refit comparison reads that run's family and twins, and trains nothing
    from benchmarks import classifier_refit

    refit = classifier_refit.run(True, tmp_path)["results"]["members"]
    assert [r["name"] for r in refit] == [r["name"] for r in twins]
    for r, twin in zip(refit, twins, strict=True):
        assert r["scratch_accuracy"] == twin["scratch_accuracy"]
        assert r["refit_gap_pp"] == pytest.approx(
            100 * (r["refit_accuracy"] - r["scratch_accuracy"]))
        assert 0 <= r["shared_accuracy"] <= 1 and 0 <= r["refit_accuracy"] <= 1
    # the fine-tune comparison reads that family and twins, and tunes only what it is told
    from benchmarks import member_finetune

    assert member_finetune.cli(["--quick", "--out", str(tmp_path), "--finetune", "m0",
                                "--steps", "5"]) == 0
    tuned = json.loads((tmp_path / "member_finetune.json").read_text())
    (row,) = tuned["results"]["members"]
    assert row["name"] == "m0" and row["scratch_accuracy"] == twins[0]["scratch_accuracy"]
    assert row["shared_accuracy"] == pytest.approx(refit[0]["refit_accuracy"])
    assert row["tuned_gap_pp"] == pytest.approx(
        100 * (row["tuned_accuracy"] - row["scratch_accuracy"]))
    head = tuned["headline"]
    assert head["finetune_cpu_s"] > 0 and head["search_plus_finetune_cpu_s"] == pytest.approx(
        head["search_cpu_s"] + head["finetune_cpu_s"])
    assert head["their_twins_cpu_s"] == pytest.approx(twins[0]["scratch_step_cpu_s"])
    # more twins of m0: seed 0 is figure 2's own (read from its cache), seed 1 a new network
    from benchmarks import twin_spread

    assert twin_spread.cli(["--quick", "--out", str(tmp_path), "--names", "m0",
                            "--seeds", "1,0"]) == 0
    spread_doc = json.loads((tmp_path / "twin_spread.json").read_text())
    (row,) = spread_doc["results"]["members"]
    assert row["seeds"] == [0, 1]
    assert spread_doc["command"].endswith(
        f"--quick --out {tmp_path} --names m0 --seeds 1,0")  # reruns as it ran
    assert row["twin_accuracies"][0] == twins[0]["scratch_accuracy"]
    assert row["family_accuracy"] == twins[0]["family_accuracy"]
    from benchmarks.training import twin_path
    from supernet import ArchConfig

    recipe = json.loads((tmp_path / "one_vs_many.json").read_text())["settings"]["recipe"]
    config = ArchConfig.from_dict(twins[0]["config"])
    seeded = [twin_path(True, tmp_path, config, recipe, s).with_suffix(".pt") for s in (0, 1)]
    assert all(p.is_file() for p in seeded)  # seed 1 trained and cached beside seed 0
    weights = [torch.load(p) for p in seeded]
    assert any(not torch.equal(a, weights[1][k]) for k, a in weights[0].items())
    # an A/B search scores the same member configs of that family
    from benchmarks import search_variant

    family = tmp_path / "shared" / "export" / "family.pt"
    out = tmp_path / "variant"
    assert search_variant.cli(["--quick", "--out", str(out), "--family", str(family),
                               "--members", "m0", "--set", "sandwich_random=0"]) == 0
    doc = json.loads((out / "search_variant.json").read_text())
    assert doc["settings"]["overrides"] == {"sandwich_random": 0}
    assert 0 <= doc["headline"]["m0_accuracy"] <= 1


def test_twin_spread_sets_a_member_against_its_twins_mean():
    from benchmarks.twin_spread import spread

    got = spread(0.90, [0.88, 0.91, 0.94])
    assert got["twin_mean"] == pytest.approx(91.0)
    assert got["twin_std"] == pytest.approx(3.0)  # sample sd of 88, 91, 94
    assert (got["twin_min"], got["twin_max"]) == pytest.approx((88.0, 94.0))
    assert got["gap_to_mean_pp"] == pytest.approx(-1.0)
    assert spread(0.5, [0.4])["twin_std"] == 0.0


def test_a_twins_cache_key_is_unchanged_for_seed_0_and_differs_per_seed(tmp_path):
    """Figure 2's cached twins (seed 0) stay valid; another seed is another network."""
    import hashlib

    from benchmarks.common import mode
    from benchmarks.training import twin_path

    recipe = {"weight_lr": 0.1}
    m = mode(True)
    old_key = json.dumps(["bl", recipe, m.epochs, m.limit, m.batch_size], sort_keys=True)
    name = hashlib.sha1(old_key.encode()).hexdigest()[:12]
    assert twin_path(True, tmp_path, "bl", recipe).name == f"{name}.json"
    assert twin_path(True, tmp_path, "bl", recipe, 0) == twin_path(True, tmp_path, "bl", recipe)
    seeded = {twin_path(True, tmp_path, "bl", recipe, s) for s in (0, 1, 2)}
    assert len(seeded) == 3


def test_a_result_records_the_whole_command_with_a_modules_own_options(tmp_path, monkeypatch):
    """A module with its own options hands `main` the rest; the result still records every
    option typed, or its command would not rerun it."""
    from benchmarks import member_finetune

    seen = {}
    monkeypatch.setattr(member_finetune, "run",
                        lambda quick, out_dir, **kw: seen.update(kw) or {"headline": {}})
    argv = ["--quick", "--finetune", "m0", "--steps", "7", "--out", str(tmp_path)]
    assert member_finetune.cli(argv) == 0
    assert seen["command"] == "python -m benchmarks.member_finetune " + " ".join(argv)
    assert (seen["members"], seen["steps"]) == ("m0", 7)


def test_a_figure_alone_creates_its_output_folder(tmp_path):
    """`python -m benchmarks.<figure> --out NEW` must not lose a finished run to a missing
    folder when the figure saves its plot."""
    from benchmarks.common import main as figure_main

    def run(quick, out_dir, **_):
        Path(out_dir, "plot.png").write_bytes(b"png")
        return {"headline": {"quick": quick}}

    out = tmp_path / "new" / "folder"
    assert figure_main("stand_in", run, ["--quick", "--out", str(out)]) == 0
    assert (out / "plot.png").read_bytes() == b"png"


def test_the_op_count_sees_native_kernel_calls():
    """A native kernel is invisible to the dispatcher; the op count still counts its call."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.supernet_overhead import count_ops
    from supernet import native
    from supernet.fused import native_weight_forward

    if native.library() is None:
        pytest.skip("no C++ compiler to build the native kernels")
    w, p = torch.randn(4, 3, 3, 3), torch.tensor([0.5, 0.5])
    native_weight_forward(w, p, (4, 8))  # builds the mix's cached constants
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.relu(w)
    plain = count_ops(prof)["ops"]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.relu(w)
        native_weight_forward(w, p, (4, 8))
    assert count_ops(prof)["ops"] == plain + 2  # its output's allocation and the kernel


def test_the_relaxed_step_breakdown_finds_each_quantizer_call_on_its_side():
    """The per-op breakdown puts the activation quantizer's kernels on the relaxed side only,
    once per quantizer module and step, and ReLU6's backward on the plain side."""
    import torch.nn.functional as F

    from benchmarks.native_kernels import breakdown
    from nas.arch_params import ArchParameters
    from supernet import SearchSpace, SuperNet, extract, native
    from supernet.quant import ActQuantizer
    from tests.conftest import TINY

    if native.library() is None:
        pytest.skip("no C++ compiler to build the native kernels")
    space = SearchSpace.from_yaml(TINY)
    net, alpha = SuperNet(space).train(), ArchParameters(space)
    plain = extract(SuperNet(space), space.largest()).train()
    x = torch.randn(4, space.input_channels, space.input_size, space.input_size)

    def step(model):
        def run():
            sum(F.cross_entropy(z, torch.zeros(4, dtype=torch.long)) for z in model(x)).backward()
        return run

    out = breakdown(step(lambda v: net(v, alpha.probs())), step(plain), top=1000)
    ops = {row["op"]: row for row in out["ops"]}
    quantizers = sum(isinstance(m, ActQuantizer) for m in net.modules())
    for kernel in ("hwnas::act_forward", "hwnas::act_backward"):
        assert ops[kernel]["relaxed_calls"] == quantizers and ops[kernel]["plain_calls"] == 0
        assert ops[kernel]["extra_ms"] == ops[kernel]["relaxed_ms"] > 0
    assert ops["aten::hardtanh_backward"]["plain_calls"] > 0
    assert out["relaxed_total_ms"] == pytest.approx(sum(r["relaxed_ms"] for r in out["ops"]))


def test_a_search_variant_refuses_unknown_settings_and_a_missing_family(tmp_path, capsys):
    from benchmarks import search_variant

    with pytest.raises(SystemExit, match="not SupernetSearch arguments"):
        search_variant.run(True, tmp_path, family="unused", members="m0",
                           overrides={"sandwich_draw": "uniform"})
    with pytest.raises(SystemExit):
        search_variant.cli(["--quick", "--out", str(tmp_path), "--family", "f",
                            "--members", "m0", "--set", "novalue"])
    assert "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--family: .*does not exist"):
        search_variant.run(True, tmp_path, family=str(tmp_path / "none.pt"), members="m0",
                           overrides={})


def test_a_member_finetune_refuses_a_missing_family_and_no_steps(tmp_path, capsys):
    from benchmarks import member_finetune

    with pytest.raises(SystemExit, match="no exported family"):
        member_finetune.run(True, tmp_path, members="m0", steps=1, lr=0.1)
    with pytest.raises(SystemExit):
        member_finetune.cli(["--quick", "--out", str(tmp_path), "--steps", "0"])
    assert "--steps: must be at least 1, got 0" in capsys.readouterr().err
