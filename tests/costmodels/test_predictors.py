"""The expert (roofline) and learned (MLP) whole-network predictors fit what they should."""

import random

import pytest

from costmodels import OpSignature, table_cost
from costmodels.predictors import MLPPredictor, RooflineFit, member_features
from supernet.layers import describe_layers


def members(space, n, seed):
    rng = random.Random(seed)
    archs = [space.sample(rng) for _ in range(n)]
    return archs, [[OpSignature.from_shape(s) for s in describe_layers(space, a)]
                   for a in archs]


def test_the_roofline_fit_recovers_a_roofline_law(tiny):
    archs, layers = members(tiny, 30, 0)
    truth = RooflineFit(peak_macs=1e9, bandwidth=1e10, overhead_ms=0.05)
    fit = RooflineFit.fit(layers, [truth(sigs) for sigs in layers])
    _, held_out = members(tiny, 10, 1)
    for sigs in held_out:
        assert fit(sigs) == pytest.approx(truth(sigs), rel=0.02)


def test_the_mlp_learns_a_multiplicative_correction_of_the_table(tiny, tiny_table):
    archs, layers = members(tiny, 40, 0)
    table_ms = [table_cost(tiny, tiny_table, a) for a in archs]
    feats = [member_features(sigs, tiny_table) for sigs in layers]
    mlp = MLPPredictor(seed=0).fit(feats, table_ms, [1.3 * t for t in table_ms])
    test_archs, test_layers = members(tiny, 10, 1)
    for arch, sigs in zip(test_archs, test_layers, strict=True):
        t = table_cost(tiny, tiny_table, arch)
        assert mlp(member_features(sigs, tiny_table), t) == pytest.approx(1.3 * t, rel=0.03)
    again = MLPPredictor(seed=0).fit(feats, table_ms, [1.3 * t for t in table_ms])
    assert again(feats[0], table_ms[0]) == mlp(feats[0], table_ms[0])  # seeded
