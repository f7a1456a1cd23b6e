"""The family runtime: loading family.pt, switching members, early exits, budget control."""

import time

import pytest
import torch

from deploy import BudgetController, FamilyError, FamilyRuntime, load_member
from nas.family.export import export_family
from nas.family.recalibrate import evaluate_member
from tests.conftest import synthetic_data as data

RECAL = 2


@pytest.fixture(scope="module")
def exported(tiny_search):
    search, _, d = tiny_search
    export_family(search, d / "family", data(), members=4, recal_batches=RECAL,
                  latency_repeats=3, onnx=False, progress=False)
    return search, d / "family"


@pytest.fixture()
def runtime(exported):
    return FamilyRuntime.load(exported[1] / "family.pt")


def batch(n=16, seed=0):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def same(a, b, atol=1e-6):
    return len(a) == len(b) and all(torch.allclose(x, y, atol=atol)
                                    for x, y in zip(a, b, strict=True))


def test_member_outputs_equal_the_recalibrated_member(exported, runtime):
    search, _ = exported
    dm, x = data(), batch()
    for name in runtime.names:
        runtime.set_member(name)
        ev = evaluate_member(search.net, runtime.info.config, dm.weights_dataloader(),
                             dm.test_dataloader(), recal_batches=RECAL, test_limit=1,
                             latency_device=None)
        with torch.no_grad():
            got = runtime(x)
            assert same(got, ev.module(x))
        assert len(got) == len(runtime.module.exit_stages)


def test_standalone_member_equals_the_family_member(exported, runtime):
    x = batch()
    for name in runtime.names:
        runtime.set_member(name)
        static = load_member(exported[1] / "members" / name)
        with torch.no_grad():
            assert same(static(x), runtime(x), atol=0)


def test_switching_is_a_reference_swap_not_a_reload(exported, runtime):
    modules = dict(runtime.member_modules)
    n = 2000
    start = time.perf_counter()
    for i in range(n):
        runtime.set_member(runtime.names[i % len(runtime.names)])
    per_switch = (time.perf_counter() - start) / n
    assert per_switch < 0.05  # a sanity bound, not a benchmark (µs in practice)
    assert all(runtime.member_modules[k] is m for k, m in modules.items())
    with pytest.raises(KeyError, match="no member"):
        runtime.set_member("nope")


def test_set_budget_picks_the_largest_member_that_fits(runtime):
    costs = [runtime.infos[n].costs["latency_ms"] for n in runtime.names]
    assert costs == sorted(costs)
    assert runtime.set_budget(latency_ms=costs[1] * 1.001) == runtime.names[1]
    assert runtime.set_budget(latency_ms=1e9) == runtime.names[-1]
    measured = runtime.infos[runtime.names[0]].costs["measured_latency_ms"]
    assert runtime.set_budget(latency_ms=1e9, measured_latency_ms=measured * 1.0001)
    with pytest.raises(ValueError, match="no member meets"):
        runtime.set_budget(latency_ms=costs[0] / 2)


def test_early_exit_thresholds(runtime):
    runtime.set_member(runtime.names[-1])
    n_exits = len(runtime.module.exit_stages)
    assert n_exits == 2
    x = batch(32)
    with torch.no_grad():
        full = runtime(x)
    for criterion in ("max_softmax", "entropy"):
        first = runtime.predict_early_exit(x, 0.0, criterion)
        assert (first.exit_index == 0).all() and torch.allclose(first.logits, full[0])
        last = runtime.predict_early_exit(x, 1.01, criterion)
        assert (last.exit_index == n_exits - 1).all() and torch.allclose(last.logits, full[-1])
        assert (last.exit_stage == runtime.module.exit_stages[-1]).all()
        t = float(first.confidence.median())
        mixed = runtime.predict_early_exit(x, [t], criterion)
        early = mixed.exit_index == 0
        assert 0 < int(early.sum()) < len(x)
        assert torch.allclose(mixed.logits[early], full[0][early])
        assert torch.allclose(mixed.logits[~early], full[-1][~early], atol=1e-6)


def test_calibrated_thresholds_meet_the_budget(runtime):
    runtime.set_member(runtime.names[-1])
    loader = data().val_dataloader()
    costs = runtime.info.exit_costs["latency_ms"]
    budget = (costs[0] + costs[-1]) / 2
    cal = runtime.calibrate_thresholds(loader, budget)
    assert cal.expected_cost <= budget and len(cal.thresholds) == len(costs)
    used, right, n = 0.0, 0.0, 0
    for x, y in loader:  # the thresholds give that cost and accuracy when actually applied
        r = runtime.predict_early_exit(x, cal.thresholds)
        used += sum(costs[int(k)] for k in r.exit_index)
        right += float((r.logits.argmax(-1) == y).sum())
        n += len(y)
    assert used / n == pytest.approx(cal.expected_cost) and used / n <= budget
    assert right / n == pytest.approx(cal.accuracy)
    assert runtime.calibrate_thresholds(loader, costs[-1]).accuracy >= cal.accuracy
    with pytest.raises(ValueError, match="below the cheapest"):
        runtime.calibrate_thresholds(loader, costs[0] / 2)


def test_budget_controller_follows_load_and_a_changing_budget(runtime):
    names = runtime.names
    cost = {n: runtime.infos[n].costs["latency_ms"] for n in names}
    runtime.set_member(names[-1])
    heard = []
    budget = cost[names[1]] * 1.05
    ctl = BudgetController(runtime, budget, on_switch=heard.append)

    def run(steps, load, new_budget=None):
        for _ in range(steps):
            ctl.update(cost[runtime.current] * load, new_budget)
        return runtime.current

    assert run(40, 1.0) == names[1]  # the largest member under the budget, and it stays
    assert ctl.events and heard == ctl.events and ctl.events[0].from_member == names[-1]
    n_events = len(ctl.events)
    assert run(20, 1.0) == names[1] and len(ctl.events) == n_events  # no oscillation
    assert run(40, 1.0, new_budget=cost[names[-1]] * 1.1) == names[-1]  # battery charged
    assert run(40, 1e3) == names[0]  # heavy load: down to the smallest
    assert all(e.to_member != e.from_member for e in ctl.events)


def test_truncated_or_foreign_files_are_clear_errors(exported, tmp_path):
    data_ = (exported[1] / "family.pt").read_bytes()
    cut = tmp_path / "family.pt"
    cut.write_bytes(data_[: len(data_) // 2])
    with pytest.raises(FamilyError, match="truncated") as err:
        FamilyRuntime.load(cut)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert str(cut) in str(err.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(FamilyError, match="not an hwnas family"):
        FamilyRuntime.load(other)
    with pytest.raises(FamilyError, match="does not exist"):
        FamilyRuntime.load(tmp_path / "missing.pt")
    family = torch.load(exported[1] / "family.pt", weights_only=True)
    family["members"][0]["config"]["stage1.width"] = 10
    torch.save(family, tmp_path / "tampered.pt")
    with pytest.raises(FamilyError, match=r"member 'm0'.*stage1.width=10"):
        FamilyRuntime.load(tmp_path / "tampered.pt")
    family["version"] = 1
    torch.save(family, tmp_path / "old.pt")
    with pytest.raises(FamilyError, match=r"version 1, this hwnas reads versions 2, 3, 4; "
                                          r"export it again with `hwnas export"):
        FamilyRuntime.load(tmp_path / "old.pt")


class Evil:
    def __reduce__(self):  # would run a shell command if the file were unpickled unsafely
        return (print, ("this must never run",))


def test_a_tampered_family_or_member_file_is_one_line_without_unsafe_advice(exported, tmp_path,
                                                                          capsys):
    family = tmp_path / "family.pt"
    torch.save({"format": "hwnas-family", "payload": Evil()}, family)
    member = tmp_path / "m0"
    member.mkdir()
    (member / "config.json").write_text((exported[1] / "members/m0/config.json").read_text())
    torch.save({"stem.0.weight": Evil()}, member / "model.pt")
    for load, path in ((FamilyRuntime.load, family), (load_member, member)):
        with pytest.raises(FamilyError) as err:
            load(path)
        msg = str(err.value)
        assert "\n" not in msg and "weights_only" not in msg and "export it again" in msg
        assert str(path) in msg and "tampered" in msg
        assert err.value.__cause__ is None and err.value.__suppress_context__
    assert "must never run" not in capsys.readouterr().out
    (member / "config.json").write_text("{not json")
    with pytest.raises(FamilyError, match=r"config.json: not a member config"):
        load_member(member)
    with pytest.raises(FamilyError, match="does not exist"):
        load_member(tmp_path / "nowhere")
