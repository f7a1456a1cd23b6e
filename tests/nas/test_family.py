"""The nested family: a chain of configs chosen by α, each ⊆ the next, cost strictly rising."""


import pytest
import torch

from costmodels import build_analytic_table, table_cost
from nas.family.chain import argmax_config, build_family, cached, nested_path, parse_budgets, spread
from nas.family.pareto import format_table, mark_front, pareto_flags
from supernet import SpaceError

METRIC = "latency_ms"


@pytest.fixture(scope="module")
def table(tiny_space):
    return build_analytic_table(tiny_space, "edgetpu")


def uniform(space):
    return {d.key: torch.full((len(d.choices),), 1.0 / len(d.choices)) for d in space.decisions}


def skewed(space, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {d.key: torch.softmax(3 * torch.randn(len(d.choices), generator=g), -1)
            for d in space.decisions}


def cost(space, table, metric=METRIC):
    return lambda a: table_cost(space, table, a, metric)


def assert_chain(space, table, configs):
    c = cost(space, table)
    for a, b in zip(configs, configs[1:], strict=False):
        assert a < b, f"{a} is not nested in {b}"
        assert c(a) < c(b)
        for key in a:  # widths/depths prefixes, bits and exits never decrease
            assert a[key] <= b[key]


@pytest.mark.parametrize("start", ["largest", "argmax"])
def test_chain_is_strictly_nested_with_strictly_increasing_cost(tiny_space, table, start):
    probs = skewed(tiny_space)
    fam = build_family(tiny_space, probs, table, members=8, start=start)
    configs = [m.config for m in fam.members]
    assert len(configs) == 8
    assert_chain(tiny_space, table, configs)
    c = cost(tiny_space, table)
    assert c(configs[0]) == c(tiny_space.smallest()) and configs[-1] == tiny_space.largest()
    assert [m.name for m in fam.members] == [f"m{i}" for i in range(8)]
    costs = [m.costs[METRIC] for m in fam.members]
    assert costs == sorted(set(costs))
    for m in fam.members:  # every table metric, and the cost of running up to each exit
        assert set(m.costs) == set(table.metrics)
        assert m.exit_costs[METRIC][-1] == pytest.approx(m.costs[METRIC])
        assert m.exit_costs[METRIC] == sorted(m.exit_costs[METRIC])
    if start == "argmax":  # the search's own answer, or a larger config as cheap, is kept
        argmax = argmax_config(tiny_space, probs)
        assert c(argmax) in [m.costs[METRIC] for m in fam.members]


def test_full_path_runs_from_smallest_to_largest_and_is_nested(tiny_space, table):
    c = cost(tiny_space, table)
    path = nested_path(tiny_space, skewed(tiny_space, 1), c)
    assert c(path[0]) == c(tiny_space.smallest()) and path[-1] == tiny_space.largest()
    assert all(a[k] == tiny_space.decision(k).choices[0] for a in path if a["exit"] == 1
               for k in a if k.startswith("stage2."))  # stages that never run: smallest choice
    assert_chain(tiny_space, table, path)


def test_alpha_decides_what_is_given_up_last(tiny_space, table):
    c = cost(tiny_space, table)
    probs = uniform(tiny_space)
    path = nested_path(tiny_space, probs, c)
    probs["stage1.width"] = torch.tensor([1e-6, 1 - 1e-6])  # the search is sure: keep it wide
    favoured = nested_path(tiny_space, probs, c)
    first_wide = [i for i, a in enumerate(favoured) if a["stage1.width"] == 12][0]
    assert first_wide <= 1  # only the very last step down narrows it
    assert first_wide < [i for i, a in enumerate(path) if a["stage1.width"] == 12][0]


def test_budgets_pick_the_largest_nested_member_under_each(tiny_space, table):
    probs = skewed(tiny_space)
    c = cost(tiny_space, table)
    path = nested_path(tiny_space, probs, c)
    lo, hi = c(path[0]), c(path[-1])
    budgets = [lo * 1.01, (lo + hi) / 2, hi * 2]
    fam = build_family(tiny_space, probs, table, members=3, budgets={METRIC: budgets})
    assert_chain(tiny_space, table, [m.config for m in fam.members])
    for b in budgets:
        picked = fam[fam.budget_picks[f"{METRIC}<={b:g}"]]
        assert picked.costs[METRIC] <= b
        larger = [a for a in path if c(a) > c(picked.config)]
        assert not larger or c(larger[0]) > b  # the best nested config under the budget
    assert fam[fam.budget_picks[f"{METRIC}<={hi * 2:g}"]].config == tiny_space.largest()
    with pytest.raises(ValueError, match="no nested member fits"):
        build_family(tiny_space, probs, table, budgets={METRIC: [lo / 2]})


def test_budgets_in_another_metric(tiny_space, table):
    fam = build_family(tiny_space, skewed(tiny_space), table, members=4,
                       budgets={"weight_bytes": [4000]})
    picked = fam[fam.budget_picks["weight_bytes<=4000"]]
    assert picked.costs["weight_bytes"] <= 4000 and "weight_bytes<=4000" in picked.budgets


def test_given_configs_must_belong_to_the_space_and_nest(tiny_space, table):
    small, large = tiny_space.smallest(), tiny_space.largest()
    fam = build_family(tiny_space, uniform(tiny_space), table, configs=[large, small.to_dict()])
    assert [m.config for m in fam.members] == [small, large]
    with pytest.raises(SpaceError, match=r"does not belong.*stage1.width=10"):
        build_family(tiny_space, uniform(tiny_space), table,
                     configs=[small.replace(stage1__width=10)])
    a = small.replace(stage1__width=12)
    b = small.replace(stage2__width=16)
    with pytest.raises(ValueError, match="nested chain"):
        build_family(tiny_space, uniform(tiny_space), table, configs=[a, b])


def test_spread_is_even_in_log_cost_and_keeps_the_ends():
    costs = [2 ** i for i in range(11)]
    assert spread(costs, 3) == [0, 5, 10]
    assert spread(costs, 20) == list(range(11))
    picks = spread([1, 1.1, 1.2, 50, 100], 4)
    assert picks[0] == 0 and picks[-1] == 4 and picks == sorted(set(picks))


def test_parse_budgets():
    assert parse_budgets(["latency_ms=0.5,1,2", "energy_mj=3"]) == {
        "latency_ms": [0.5, 1.0, 2.0], "energy_mj": [3.0]}
    with pytest.raises(ValueError, match="METRIC=V1"):
        parse_budgets(["latency_ms"])


def test_pareto_flags_and_table():
    assert pareto_flags([1, 2, 3, 2.5], [0.5, 0.7, 0.9, 0.6]) == [True, True, True, False]
    assert pareto_flags([1, 1], [0.5, 0.5]) == [True, True]  # equal points dominate neither
    records = [{"name": f"m{i}", "costs": {METRIC: c, "macs": 10 - c}, "accuracy": [a],
                "measured_latency_ms": c * 2} for i, (c, a) in enumerate([(1, .5), (2, .4)])]
    mark_front(records)
    assert records[1]["on_front"] == {METRIC: False, "macs": True, "measured_latency_ms": False}
    text = format_table(records)
    assert "m0" in text and "*" in text


@pytest.mark.slow
def test_each_budget_has_a_member_close_below_it_and_the_chain_stays_nested(fmnist_space):
    """The chain passes through a config in [0.98, 1.00]× each budget where one nests; α's
    plain greedy path alone leaves most budgets with a coarse step below them."""
    space = fmnist_space
    table = build_analytic_table(space, "edgetpu")
    c = cost(space, table)
    lo, hi = c(space.smallest()), c(space.largest())
    c = cached(c)
    gen, close, plain = torch.Generator().manual_seed(1), 0, 0
    for _ in range(2):
        probs = {d.key: torch.softmax(2 * torch.randn(len(d.choices), generator=gen), -1)
                 for d in space.decisions}
        budgets = sorted(lo + (hi - lo) * float(f) for f in torch.rand(3, generator=gen))
        anchor = argmax_config(space, probs)
        fam = build_family(space, probs, table, members=3, budgets={METRIC: budgets},
                           anchors={"shipped": anchor})
        assert_chain(space, table, [m.config for m in fam.members])
        assert c(fam[fam.budget_picks["shipped"]].config) == c(anchor)
        path = nested_path(space, probs, c)
        for b in budgets:
            picked = fam[fam.budget_picks[f"{METRIC}<={b:g}"]].costs[METRIC]
            assert picked <= b
            close += picked >= 0.98 * b
            plain += max(c(a) for a in path if c(a) <= b) >= 0.98 * b
    assert close >= 4 and plain <= 1  # of 6 budgets


def test_budget_anchors_bring_members_closer_below_budgets_on_the_tiny_space(tiny_space, table):
    c = cached(cost(tiny_space, table))
    lo, hi = c(tiny_space.smallest()), c(tiny_space.largest())
    gen, anchored, plain = torch.Generator().manual_seed(1), [], []
    for _ in range(3):
        probs = skewed(tiny_space, int(torch.randint(100, (1,), generator=gen)))
        budgets = [lo + (hi - lo) * f for f in (0.2, 0.5, 0.8)]
        fam = build_family(tiny_space, probs, table, members=2, budgets={METRIC: budgets})
        assert_chain(tiny_space, table, [m.config for m in fam.members])
        path = nested_path(tiny_space, probs, c)
        for b in budgets:
            anchored.append(fam[fam.budget_picks[f"{METRIC}<={b:g}"]].costs[METRIC] / b)
            plain.append(max(c(a) for a in path if c(a) <= b) / b)
    assert max(anchored) <= 1 and sum(anchored) > sum(plain)


def test_a_family_of_the_fbnet_shaped_space_has_no_aliases_of_one_network():
    """Grouped-convs decisions at an expansion without a grouped candidate change nothing;
    the chain writes them as dense (1), so no two members are the same network."""
    from pathlib import Path

    from nas.family.chain import canonical
    from supernet import SearchSpace

    space = SearchSpace.from_yaml(Path(__file__).resolve().parents[2] / "configs" / "spaces"
                                  / "fbnet_tiny.yaml")
    table = build_analytic_table(space, "edgetpu")
    for seed in range(3):
        fam = build_family(space, skewed(space, seed), table, members=8, start="argmax")
        configs = [m.config for m in fam.members]
        assert_chain(space, table, configs)
        assert all(canonical(space, a) == a for a in configs)
        for a in configs:
            for b in space.blocks:
                if b.dense and a[b.expand] != b.grouped_expand and b.stage <= a["exit"]:
                    assert a[b.dense] == 1
    idle = space.largest().replace(**{b.dense.replace(".", "__"): 0 for b in space.blocks
                                      if b.dense})  # expansion 3 or 6: nothing is grouped
    assert canonical(space, idle) == space.largest()
