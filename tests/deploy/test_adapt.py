"""Run-time adaptation: the controller holds a deadline as the load changes (fake clock)."""

import itertools
import random
from types import SimpleNamespace

import pytest
import torch

from deploy import BudgetController
from deploy.adapt import (
    Trace,
    battery_power,
    load_level,
    member_energy,
    offline_pick,
    oracle_picks,
    run_stream,
)

COSTS = {"m0": 1.0, "m1": 2.0, "m2": 4.0, "m3": 8.0}  # ms at no load


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeRuntime:
    """What the loop and controller use of a `FamilyRuntime`; an inference advances the fake
    clock by the member's cost times the current load (× a seeded jitter, if any)."""

    def __init__(self, clock, jitter=0.0):
        self.infos = {n: SimpleNamespace(costs={"latency_ms": c}) for n, c in COSTS.items()}
        self.names, self.current, self.clock = list(COSTS), "m3", clock
        self.load, self.jitter, self.rng = 1.0, jitter, random.Random(0)
        self.penalty = dict.fromkeys(COSTS, 1.0)  # extra slowdown of one member
        self.calls, self.wait_every, self.wait_ms = 0, 0, 0.0  # a CPU wait every k-th call

    def set_member(self, name):
        self.current = name

    def __call__(self, x):
        noise = 1 + self.rng.uniform(-self.jitter, self.jitter)
        self.clock.t += COSTS[self.current] * self.load * noise * self.penalty[self.current] / 1e3
        self.calls += 1
        if self.wait_every and self.calls % self.wait_every == 0:
            self.clock.t += self.wait_ms / 1e3
        return [torch.zeros(1, 3)]


def stream(runtime, load_at, n, deadline, ctl, clock):
    """n inputs; before the i-th, the runtime's load is ``load_at(i)``."""
    def inputs():
        for i in range(n):
            runtime.load = load_at(i)
            yield torch.zeros(1, 1), torch.tensor([i % 3])
    return run_stream(runtime, inputs(), deadline, ctl, clock=clock)


def members(trace, a, b):
    return [s.member for s in trace.steps[a:b]]


@pytest.mark.parametrize("jitter", [0.0, 0.1])
def test_controller_steps_down_under_load_and_back_up_without_oscillating(jitter):
    clock = FakeClock()
    rt = FakeRuntime(clock, jitter)
    ctl = BudgetController(rt, 5.0, margin=0.1)
    # no load: m2 (4 ms) fits a 5 ms deadline, m3 (8 ms) does not
    # load ×3 from step 200 to 400: only m0 (3 ms) fits; then the load is gone again
    trace = stream(rt, lambda i: 3.0 if 200 <= i < 400 else 1.0, 600, 5.0, ctl, clock)
    assert members(trace, 0, 1) == ["m3"]
    assert set(members(trace, 50, 200)) == {"m2"}  # settled on the largest that fits, stays
    assert set(members(trace, 220, 400)) == {"m0"}  # stepped down to the one that fits
    assert set(members(trace, 480, 600)) == {"m2"}  # and back up once the load fell
    ups_and_downs = [s.member for s in trace.steps]
    switches = sum(a != b for a, b in itertools.pairwise(ups_and_downs))
    # start → m2, down to m0 in one jump, back up to m2 (via m1: the window that saw the load
    # still holds a tail of 3 ms, so m2 is not predicted to fit at once): no chatter
    assert [e.to_member for e in ctl.events] == ["m2", "m0", "m1", "m2"] and switches == 4
    steady = [s for i, s in enumerate(trace.steps) if 50 <= i < 200 or 420 <= i]
    assert not any(s.missed for s in steady)


def test_trace_summary_counts_misses_accuracy_and_switches():
    clock = FakeClock()
    rt = FakeRuntime(clock)
    trace = stream(rt, lambda i: 1.0, 30, 5.0, None, clock)  # no controller: m3 always
    s = trace.summary()
    assert s["inferences"] == 30 and s["miss_rate"] == 1.0 and s["switches_per_s"] == 0
    assert s["accuracy"] == pytest.approx(10 / 30)  # zeros predict class 0; labels i % 3
    assert trace.duration_s == pytest.approx(30 * 8e-3)
    assert "deadline misses 100.00% of 30 inferences" in trace.summary_line()
    with pytest.raises(ValueError, match="empty"):
        Trace().summary()
    with pytest.raises(ValueError, match="deadline_ms"):
        run_stream(rt, [], 0.0)


def test_duration_bounds_the_stream_by_the_injected_clock():
    clock = FakeClock()
    rt = FakeRuntime(clock)
    trace = run_stream(rt, itertools.repeat(torch.zeros(1, 1)), 100.0, None, clock=clock,
                       duration_s=0.08)
    assert len(trace.steps) == 10  # 8 ms each until 80 ms have passed


def test_load_scenarios_and_offline_pick():
    assert [load_level("step", t, 9, 2) for t in (0, 3, 5.9, 6)] == [0, 2, 2, 0]
    assert [load_level("ramp", t, 6, 2) for t in (0, 1.4, 2.7, 3.9, 4)] == [0, 1, 2, 2, 0]
    assert [load_level("periodic", t, 6, 1) for t in (0, 0.5, 1.0, 1.5)] == [0, 1, 0, 1]
    assert load_level("none", 3, 6, 2) == 0
    with pytest.raises(ValueError, match="scenario"):
        load_level("storm", 0, 1, 1)
    assert offline_pick({"a": 1.0, "b": 2.0, "c": 4.0}, 3.0) == "b"
    assert offline_pick({"a": 1.0, "b": 2.0}, 0.5) == "a"


def test_a_lone_preempted_inference_does_not_move_the_controller():
    clock = FakeClock()
    rt = FakeRuntime(clock)
    rt.set_member("m2")
    ctl = BudgetController(rt, 5.0)
    trace = stream(rt, lambda i: 10.0 if i % 25 == 24 else 1.0, 200, 5.0, ctl, clock)
    assert {s.member for s in trace.steps} == {"m2"} and not ctl.events
    assert sum(s.missed for s in trace.steps) == 8  # the spikes themselves
    ctl1 = BudgetController(rt, 5.0, window=1)  # without the median filter, a spike moves it
    stream(rt, lambda i: 10.0 if i == 24 else 1.0, 30, 5.0, ctl1, clock)
    assert ctl1.events and ctl1.events[0].to_member == "m0"  # a spike drops it to the bottom
    with pytest.raises(ValueError, match="window"):
        BudgetController(rt, 5.0, window=0)


def test_probes_up_that_fail_back_off_instead_of_chattering():
    """Under contention m1 and m2 run 5× slower than their costs predict: each probe up from m0
    misses, so the controller waits twice as long before the next one."""
    clock = FakeClock()
    rt = FakeRuntime(clock)
    rt.penalty.update(m1=5.0, m2=5.0)  # m2: 20 ms, predicted 4 ms from m0's 1 ms
    rt.set_member("m1")
    ctl = BudgetController(rt, 5.0, up_window=8, hold=8)
    trace = stream(rt, lambda i: 1.0, 3000, 5.0, ctl, clock)
    assert len(ctl.events) <= 2 * 9 + 2  # hold 8 → 16 → … : about log2(3000 / 8) probes
    assert [e.to_member for e in ctl.events[:3]] == ["m0", "m2", "m0"]
    gaps = [b.step - a.step for a, b in itertools.pairwise(ctl.events[1::2])]
    assert all(b >= 2 * a - 8 for a, b in itertools.pairwise(gaps))  # the waits double
    assert sum(s.member == "m0" for s in trace.steps) > 0.95 * len(trace.steps)


def test_hwnas_run_on_an_exported_family(tiny_search, tmp_path, capsys):
    from nas.cli import main
    from nas.family.export import export_family
    from tests.conftest import synthetic_data

    export_family(tiny_search[0], tmp_path / "family", synthetic_data(), members=2,
                  recal_batches=1, latency_repeats=2, onnx=False, progress=False)
    plot, trace = tmp_path / "run.png", tmp_path / "trace.json"
    assert main(["run", "--family", str(tmp_path / "family" / "family.pt"), "--deadline-ms",
                 "50", "--duration-s", "0.3", "--plot", str(plot), "--trace", str(trace)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("deadline misses ") and "accuracy n/a" in line  # random inputs
    assert plot.stat().st_size > 0 and '"steps"' in trace.read_text()
    assert main(["run", "--family", str(tmp_path / "family" / "family.pt"), "--deadline-ms",
                 "-1"]) == 1
    assert "deadline_ms: must be > 0" in capsys.readouterr().err
    # the battery: energies priced by the analytic MCU table, the oracle fits each budget
    assert main(["run", "--family", str(tmp_path / "family" / "family.pt"), "--deadline-ms",
                 "50", "--duration-s", "0.3", "--load", "battery", "--policy", "oracle"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "over the energy budget 0.00%" in line


def test_a_load_step_is_answered_by_one_jump_and_its_end_by_one_jump_back():
    """From m3 (8 ms, deadline 10 ms) a load ×6 makes every member but m0 miss: the controller
    goes m3 → m0 in one switch, `window` inferences after the step, and back up to m3 without
    a miss once the load is gone."""
    clock = FakeClock()
    rt = FakeRuntime(clock)
    ctl = BudgetController(rt, 10.0, margin=0.1, window=3, up_window=20, hold=20)
    trace = stream(rt, lambda i: 6.0 if 100 <= i < 300 else 1.0, 400, 10.0, ctl, clock)
    events = [(e.step, e.from_member, e.to_member) for e in ctl.events]
    # inferences 100 and 101 ran at 48 ms: the median of 3 is over, one jump to m0
    assert events[0] == (102, "m3", "m0")
    # m0 runs 6 ms under load, 1 ms from inference 300: the window's median is 1 ms from
    # 11 in, its 90th percentile 6 ms (a 5 ms tail) until 19 in; m2 (4 + 5 ms) fits 9 first
    assert events[1:] == [(311, "m0", "m2"), (331, "m2", "m3")]
    missed = [i for i, s in enumerate(trace.steps) if s.missed]
    assert missed == [100, 101]  # recovery: 2 inferences after the step


def test_the_jump_uses_the_reference_costs_given_and_the_margin():
    clock = FakeClock()
    rt = FakeRuntime(clock)
    ref = {"m0": 1.0, "m1": 1.5, "m2": 2.0, "m3": 8.0}  # e.g. latencies measured at start
    ctl = BudgetController(rt, 10.0, costs=ref, margin=0.2)
    assert [ctl.fits(f) for f in (1.0, 4.0, 5.0, 9.0)] == [3, 2, 1, 0]  # cost × f <= 8
    assert ctl.fits(1.0, wait=3.0) == 2 and ctl.fits(2.0, wait=5.0) == 1  # cost × f + wait <= 8
    ctl.margin = 0.0
    assert ctl.fits(5.0) == 2  # 2 × 5 <= 10
    with pytest.raises(ValueError, match="costs: member 'm1'"):
        BudgetController(rt, 10.0, costs={"m0": 1.0})
    with pytest.raises(ValueError, match="margin"):
        BudgetController(rt, 10.0, margin=1.0)


class LevelSchedule:
    """A stand-in for `LoadGenerator`: the load level at a time (s), no processes."""

    def __init__(self, runtime, levels):
        self.runtime, self.levels = runtime, levels  # [(from_s, level, slowdown)], ascending

    def update(self, t_s):
        level, slowdown = 0, 1.0
        for start, lv, factor in self.levels:
            if t_s >= start:
                level, slowdown = lv, factor
        self.runtime.load = slowdown
        return level


def test_oracle_picks_the_most_accurate_member_that_fits_each_level():
    lat = {0: {"m0": [1.0] * 100, "m1": [2.0] * 100, "m2": [4.0] * 99 + [9.0]},
           1: {"m0": [3.0] * 100, "m1": [6.0] * 100, "m2": [12.0] * 100},
           2: {"m0": [6.0] * 90 + [9.0] * 10, "m1": [9.0] * 100, "m2": [20.0] * 100}}
    acc = {"m0": 0.60, "m1": 0.70, "m2": 0.75}
    assert oracle_picks(lat, 5.0, acc) == {0: "m2", 1: "m0", 2: "m0"}  # 2: none fits, m0 least
    assert oracle_picks(lat, 5.0, acc, max_miss=0.0)[0] == "m1"  # m2 misses 1 of 100
    assert oracle_picks(lat, 5.0, {**acc, "m1": 0.8})[0] == "m1"  # a better cheaper member wins


def test_the_oracle_follows_the_load_level_and_the_trace_times_its_recovery(tmp_path):
    clock = FakeClock()
    rt = FakeRuntime(clock)
    picks = {0: "m2", 1: "m0"}
    sched = LevelSchedule(rt, [(0.0, 0, 1.0), (0.4, 1, 3.0), (0.8, 0, 1.0)])

    def choose(t_s, level):
        return picks[level]
    trace = run_stream(rt, itertools.repeat(torch.zeros(1, 1)), 5.0, clock=clock,
                       duration_s=1.2, load=sched, choose=choose)
    by_level = {lv: {s.member for s in trace.steps if s.load == lv} for lv in (0, 1)}
    assert by_level == {0: {"m2"}, 1: {"m0"}} and not any(s.missed for s in trace.steps)
    assert trace.recoveries() == [(0.0, 0)]  # it never missed: recovered at once

    ctl_clock = FakeClock()
    rt2 = FakeRuntime(ctl_clock)
    rt2.set_member("m2")
    ctl = BudgetController(rt2, 5.0, margin=0.1)
    sched2 = LevelSchedule(rt2, [(0.0, 0, 1.0), (0.4, 1, 3.0)])
    trace2 = run_stream(rt2, itertools.repeat(torch.zeros(1, 1)), 5.0, ctl, clock=ctl_clock,
                        duration_s=0.8, load=sched2)
    rise = next(i for i, s in enumerate(trace2.steps) if s.load == 1)
    assert [s.missed for s in trace2.steps[rise:rise + 4]] == [True, True, False, False]
    # two 12 ms inferences of m2, then m0 at 3 ms: back under the deadline 24 ms after the rise
    assert trace2.recoveries() == [(pytest.approx(24.0), 2)]
    s = trace2.summary()
    assert s["recovery_ms"] == pytest.approx(24.0) and s["recovery_inferences"] == 2
    assert "recovery 24 ms (2 inferences)" in trace2.summary_line()
    trace2.to_json(tmp_path / "trace.json")
    again = Trace.from_json(tmp_path / "trace.json")
    assert [(a.member, a.latency_ms, a.load) for a in again.steps] == [
        (b.member, b.latency_ms, b.load) for b in trace2.steps]
    assert again.summary() == pytest.approx(s, nan_ok=True)


def test_under_a_falling_battery_the_controller_steps_down_the_energy_chain():
    """Inputs every 10 ms; the energy budget per second falls from what m3 needs to what m0
    needs; energy per inference is each member's cost (mJ). The controller, fed energies,
    keeps within a switch of the oracle, over budget at most once per switch."""
    energy = {"m0": 0.1, "m1": 0.2, "m2": 0.4, "m3": 0.8}  # mJ; at 100 Hz: 10…80 mW
    clock = FakeClock()

    def sleep(s):
        assert s > 0
        clock.t += s
    rt = FakeRuntime(clock)
    ctl = BudgetController(rt, 1.0, "energy_mj", costs=energy)

    def power(t):
        return battery_power(t, 2.0, 81.0, 10.5)
    trace = run_stream(rt, itertools.repeat(torch.zeros(1, 1)), 10.0, ctl, clock=clock,
                       duration_s=2.0, energy_mj=energy, power_mw=power, sleep=sleep)
    assert len(trace.steps) == 200  # one per 10 ms period, paced by the fake sleep
    assert [round(s.t_s, 6) for s in trace.steps[:3]] == [0.0, 0.01, 0.02]
    assert [e.to_member for e in ctl.events] == ["m2", "m1", "m0"]  # one step each, no chatter
    for s in trace.steps:
        assert s.energy_budget_mj == pytest.approx(power(s.t_s) / 100)
    over = [s for s in trace.steps if s.energy_mj > s.energy_budget_mj]
    assert len(over) <= len(ctl.events)  # the inference that showed the fall, once per switch
    assert trace.summary()["energy_over_rate"] == len(over) / 200
    assert "over the energy budget" in trace.summary_line()
    with pytest.raises(ValueError, match="energy_mj"):
        run_stream(rt, [], 10.0, power_mw=power)


def test_battery_power_falls_geometrically_and_member_energy_reads_stored_costs():
    assert battery_power(0.0, 10, 80, 10) == 80
    assert battery_power(4.5, 10, 80, 10) == pytest.approx((80 * 10) ** 0.5)  # halfway of 90%
    assert battery_power(9.0, 10, 80, 10) == battery_power(10.0, 10, 80, 10) == pytest.approx(10)
    assert load_level("battery", 5, 10, 2) == 0  # no CPU load
    rt = SimpleNamespace(infos={"a": SimpleNamespace(costs={"energy_mj": 0.5}, config=None),
                                "b": SimpleNamespace(costs={"energy_mj": 2.0}, config=None)})
    assert member_energy(rt) == {"a": 0.5, "b": 2.0}
    del rt.infos["b"].costs["energy_mj"]
    rt.net = SimpleNamespace(space="space")
    with pytest.raises(ValueError, match="store no energy_mj"):
        member_energy(rt)
    assert member_energy(rt, lambda space, configs, target: dict.fromkeys(configs, 1.0)) == {
        "a": 1.0, "b": 1.0}


def test_a_member_whose_median_fits_but_whose_tail_misses_is_left():
    """Every 4th inference waits 6 ms for the CPU (whatever the member): m3 (8 ms) has a median
    under the 10 ms deadline but misses a quarter; once a window is in, the controller predicts
    each member as its cost plus that 6 ms tail and moves to m1 (2 + 6 ms), which holds."""
    clock = FakeClock()
    rt = FakeRuntime(clock)
    rt.wait_every, rt.wait_ms = 4, 6.0
    ctl = BudgetController(rt, 10.0, margin=0.1, up_window=40)
    trace = stream(rt, lambda i: 1.0, 400, 10.0, ctl, clock)
    assert [(e.step, e.to_member) for e in ctl.events] == [(40, "m1")]  # one slow move, no more
    assert not any(s.missed for s in trace.steps[40:])
