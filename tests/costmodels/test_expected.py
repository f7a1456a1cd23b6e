import random

import pytest
import torch

from costmodels import ExpectedCost, table_cost


def _interior(space, seed: int, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {d.key: torch.softmax(torch.randn(len(d.choices), generator=g, dtype=torch.float64),
                                 0).requires_grad_(requires_grad)
            for d in space.decisions}


@pytest.mark.parametrize("metric", ["latency_ms", "energy_mj", "macs", "bitops",
                                    "weight_bytes", "peak_activation_bytes"])
def test_one_hot_equals_the_concrete_table_cost(tiny, tiny_table, metric):
    cost = ExpectedCost(tiny, tiny_table, metric)
    rng = random.Random(1)
    for arch in [tiny.largest(), tiny.smallest()] + [tiny.sample(rng) for _ in range(60)]:
        expected = cost(tiny.one_hot(arch))
        assert expected.dtype == torch.float64
        assert expected.item() == cost.concrete(arch) == table_cost(tiny, tiny_table, arch,
                                                                    metric)


@pytest.mark.parametrize("metric", ["latency_ms", "macs"])
def test_gradient_matches_finite_differences(tiny, tiny_table, metric):
    cost = ExpectedCost(tiny, tiny_table, metric)
    keys = [d.key for d in tiny.decisions]
    for seed in range(3):
        probs = _interior(tiny, seed, requires_grad=True)
        scale = cost(probs).detach()  # gradcheck's tolerances are absolute: work in units of E

        def f(*vectors, scale=scale):
            return cost(dict(zip(keys, vectors, strict=True))) / scale

        assert torch.autograd.gradcheck(f, tuple(probs[k] for k in keys), eps=1e-6,
                                        atol=1e-7, rtol=1e-5)


def test_budget_term_alone_moves_every_shaping_decision(tiny, tiny_table):
    probs = _interior(tiny, 0, requires_grad=True)
    ExpectedCost(tiny, tiny_table, "macs")(probs).backward()
    for d in tiny.decisions:
        if d.kind in {"width", "depth", "expand", "kernel", "exit"} and len(d.choices) > 1:
            grad = probs[d.key].grad
            assert grad is not None and grad[-1] > grad[0], d.key


@pytest.mark.parametrize("metric,kinds", [
    ("macs", {"width", "depth", "expand", "kernel", "exit"}),
    ("bitops", {"width", "depth", "expand", "kernel", "exit", "wbits", "abits"}),
    ("weight_bytes", {"width", "depth", "expand", "kernel", "exit", "wbits"}),
])
def test_moving_mass_to_dearer_choices_costs_more(tiny, tiny_table, metric, kinds):
    cost = ExpectedCost(tiny, tiny_table, metric)
    for seed in range(3):
        probs = _interior(tiny, seed)
        base = cost(probs).item()
        for d in tiny.decisions:
            if d.kind not in kinds or len(d.choices) < 2:
                continue
            p = probs[d.key].clone()
            shifted = p.clone()
            shifted[0], shifted[-1] = 0.5 * p[0], p[-1] + 0.5 * p[0]
            assert cost({**probs, d.key: shifted}).item() > base, (metric, d.key)


def test_float32_probabilities_and_missing_keys(tiny, tiny_table):
    cost = ExpectedCost(tiny, tiny_table, "latency_ms")
    probs = {k: v.float() for k, v in tiny.one_hot(tiny.largest()).items()}
    assert cost(probs).item() == pytest.approx(cost.concrete(tiny.largest()))
    del probs["exit"]
    with pytest.raises(KeyError, match="exit"):
        cost(probs)


def test_several_metrics_at_once(tiny, tiny_table):
    costs = ExpectedCost.for_metrics(tiny, tiny_table, ["latency_ms", "weight_bytes"])
    probs = tiny.one_hot(tiny.smallest())
    assert {m: c(probs).item() for m, c in costs.items()} == {
        m: table_cost(tiny, tiny_table, tiny.smallest(), m) for m in costs}


def test_another_spaces_table_is_refused(tiny, tiny_table):
    from costmodels import TableError
    from supernet import SearchSpace

    with pytest.raises(TableError, match="built for space"):
        ExpectedCost(SearchSpace({**tiny.spec, "num_classes": 7}), tiny_table)


def test_the_network_overhead_is_added_once(tiny, tiny_table):
    from costmodels import CostTable, OpSignature
    from supernet.layers import describe_layers

    with_overhead = CostTable(tiny_table.entries, tiny_table.meta, {"latency_ms": 0.25})
    cost = ExpectedCost(tiny, with_overhead, "latency_ms")
    arch = tiny.largest()
    layers = sum(tiny_table.lookup(OpSignature.from_shape(layer), "latency_ms")
                 for layer in describe_layers(tiny, arch))
    assert table_cost(tiny, with_overhead, arch) == pytest.approx(layers + 0.25)
    assert cost(tiny.one_hot(arch)).item() == cost.concrete(arch) == \
        table_cost(tiny, with_overhead, arch)
    assert with_overhead.id != tiny_table.id  # the overhead is part of the table's content
    # peak memory is a max over layers: no overhead there
    assert with_overhead.network_overhead("peak_activation_bytes") == 0.0


def test_a_fitted_correction_applies_inside_the_expected_cost(tiny, tiny_table):
    from costmodels import CostTable
    from supernet.layers import describe_layers

    corr = {"latency_ms": {"a": 0.6, "b": 0.002, "c": 0.01}}
    corrected = CostTable(tiny_table.entries, tiny_table.meta, {"latency_ms": 0.1}, corr)
    assert CostTable.from_dict(corrected.to_dict()).id == corrected.id != tiny_table.id
    cost = ExpectedCost(tiny, corrected, "latency_ms")
    rng = random.Random(2)
    for arch in [tiny.largest(), tiny.smallest()] + [tiny.sample(rng) for _ in range(20)]:
        plain = table_cost(tiny, tiny_table, arch)
        want = 0.6 * (plain + 0.1) + 0.002 * len(describe_layers(tiny, arch)) + 0.01
        assert table_cost(tiny, corrected, arch) == pytest.approx(want)
        assert cost(tiny.one_hot(arch)).item() == pytest.approx(cost.concrete(arch), rel=1e-12)
        assert cost.concrete(arch) == table_cost(tiny, corrected, arch)
    probs = _interior(tiny, 0, requires_grad=True)
    cost(probs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for k, p in probs.items()
               if k.endswith(("width", "depth")))
    # memory metrics take no correction
    assert ExpectedCost(tiny, corrected, "weight_bytes").concrete(tiny.largest()) == \
        table_cost(tiny, tiny_table, tiny.largest(), "weight_bytes")


def test_expected_cost_pickles_as_ddp_spawn_needs(tiny_space):
    """`ddp_spawn` pickles the search module: the expected cost must survive it and price the
    same afterwards (its slots are rebuilt on first use)."""
    import pickle

    from costmodels import build_analytic_table

    table = build_analytic_table(tiny_space, "edgetpu")
    cost = ExpectedCost(tiny_space, table, "latency_ms")
    again = pickle.loads(pickle.dumps(cost))
    for arch in (tiny_space.smallest(), tiny_space.largest()):
        assert again.concrete(arch) == cost.concrete(arch)
