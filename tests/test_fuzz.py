"""Property test over random valid spaces: build, forward, extract and price never crash."""

import random

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmodels import ExpectedCost, build_analytic_table
from supernet import SearchSpace, SuperNet, extract

ascending = lambda lo, hi, n: st.lists(st.integers(lo, hi), min_size=1, max_size=n,  # noqa: E731
                                       unique=True).map(sorted)


@st.composite
def spaces(draw):
    n_stages = draw(st.integers(1, 3))
    stages = []
    for _ in range(n_stages):
        stages.append({
            "widths": draw(ascending(2, 24, 3)),
            "depths": draw(ascending(1, 3, 2)),
            "expand_ratios": draw(st.lists(st.sampled_from([1, 1.5, 2, 3, 4, 6]), min_size=1,
                                           max_size=3, unique=True).map(sorted)),
            "kernel_sizes": draw(st.lists(st.sampled_from([1, 3, 5, 7]), min_size=1, max_size=2,
                                          unique=True).map(sorted)),
            "stride": draw(st.integers(1, 2)),
            "weight_bits": draw(st.lists(st.sampled_from([2, 3, 4, 8, 16, 32]), min_size=1,
                                         max_size=3, unique=True).map(sorted)),
            "act_bits": draw(st.lists(st.sampled_from([2, 4, 8, 32]), min_size=1, max_size=2,
                                      unique=True).map(sorted)),
        })
    return {
        "name": "fuzz",
        "input_channels": draw(st.integers(1, 3)),
        "input_size": draw(st.integers(5, 20)),
        "num_classes": draw(st.integers(2, 5)),
        "act": draw(st.sampled_from(["relu6", "hard_swish", "silu"])),
        "channel_divisor": draw(st.sampled_from([1, 4, 8])),
        "stem": {"channels": draw(st.integers(2, 12)), "stride": draw(st.integers(1, 2))},
        "exits": draw(st.lists(st.integers(1, n_stages), max_size=2, unique=True)),
        "stages": stages,
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=spaces(), seed=st.integers(0, 2**16))
def test_random_space_builds_runs_extracts_and_prices(spec, seed):
    space = SearchSpace(spec)
    torch.manual_seed(seed)
    net = SuperNet(space).eval()
    x = torch.randn(2, space.input_channels, space.input_size, space.input_size)
    arch = space.sample(random.Random(seed))
    with torch.no_grad():
        out = net(x, arch)
        static = extract(net, arch)(x)
    assert len(out) == len(static) >= 1
    for a, b in zip(out, static, strict=True):
        assert a.shape == (2, space.num_classes) and torch.isfinite(a).all()
        assert torch.allclose(a, b, atol=1e-4)
    probs = {d.key: torch.softmax(torch.randn(len(d.choices)), 0) for d in space.decisions}
    with torch.no_grad():
        assert all(torch.isfinite(z).all() for z in net(x, probs))
    cost = ExpectedCost(space, build_analytic_table(space, "fpga"), "latency_ms")
    e = cost(probs)
    assert torch.isfinite(e) and e > 0
    assert abs(float(cost(space.one_hot(arch))) - cost.concrete(arch)) <= 1e-9 * cost.concrete(arch)
