"""Per-block choices, skip choices, residual first blocks and a head conv (the FBNet shape)."""

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from supernet import SearchSpace, SpaceError, SuperNet, count_params, extract
from tests.supernet.test_extract import max_diff, randomize_

SPACES = Path(__file__).resolve().parents[2] / "configs" / "spaces"


@pytest.fixture(scope="module")
def fbnet_tiny():
    return SearchSpace.from_yaml(SPACES / "fbnet_tiny.yaml")


def test_per_block_decisions_skip_choices_and_residuals(fbnet_tiny):
    keys = fbnet_tiny.keys
    assert "stage1.block2.kernel" in keys and "stage2.block1.expand" in keys
    assert "stage1.kernel" not in keys and "stage3.kernel" in keys  # per block only if asked
    # a skip choice for every block: the identity where it fits, else a 1x1 conv
    assert fbnet_tiny.decision("stage1.block1.run").choices == (0, 1)
    assert "stage2.block1.run" in keys and "stage2.block2.run" in keys
    skip_conv = {b.name: b.skip_conv for b in fbnet_tiny.blocks}
    assert skip_conv == {"stage1.block1": False, "stage1.block2": False,
                         "stage2.block1": True, "stage2.block2": False,
                         "stage3.block1": False, "stage3.block2": False}
    residual = {b.name: b.residual for b in fbnet_tiny.blocks}
    assert residual["stage1.block1"] and not residual["stage2.block1"]
    # grouped 1x1 convs: a dense decision per block of the stages that offer them
    assert fbnet_tiny.decision("stage2.block2.dense").choices == (0, 1)
    assert not any(k.startswith("stage3.") and k.endswith("dense") for k in keys)


def test_every_fbnet_space_parses_with_its_published_shape():
    for name in ("fbnet_cifar32", "fbnet_imagenet224"):
        space = SearchSpace.from_yaml(SPACES / f"{name}.yaml")
        assert len(space.blocks) == 22 and space.head_channels == 1504
        assert sum(b.run is not None for b in space.blocks) == 22
        assert sum(b.skip_conv for b in space.blocks) == 6  # 6 blocks change shape
        assert sum(b.dense is not None for b in space.blocks) == 22


def test_extracted_member_equals_the_supernet_member(fbnet_tiny):
    net = randomize_(SuperNet(fbnet_tiny)).eval()
    x = torch.randn(3, 3, 16, 16)
    rng = random.Random(0)
    archs = [fbnet_tiny.largest(), fbnet_tiny.smallest()]
    archs += [fbnet_tiny.sample(rng) for _ in range(12)]
    for arch in archs:
        static = extract(net, arch)
        with torch.no_grad():
            assert max_diff(static(x), net(x, arch)) <= 1e-5
        assert sum(p.numel() for p in static.parameters()) == count_params(fbnet_tiny, arch)
    skipped = extract(net, fbnet_tiny.smallest())
    assert isinstance(skipped.stages[0][0], nn.Identity)  # a skipped block is the identity


def test_relaxed_one_hot_equals_concrete_and_skip_gets_a_gradient(fbnet_tiny):
    torch.manual_seed(0)
    net = randomize_(SuperNet(fbnet_tiny)).eval()
    x = torch.randn(4, 3, 16, 16)
    rng = random.Random(1)
    for arch in [fbnet_tiny.largest(), fbnet_tiny.smallest()] + \
            [fbnet_tiny.sample(rng) for _ in range(6)]:
        concrete = net(x, arch)
        assert max_diff(concrete, net(x, fbnet_tiny.one_hot(arch))[: len(concrete)]) <= 1e-5
    probs = {d.key: torch.full((len(d.choices),), 1 / len(d.choices), requires_grad=True)
             for d in fbnet_tiny.decisions}
    sum(out.square().mean() for out in net(x, probs)).backward()
    assert probs["stage2.block2.run"].grad.abs().sum() > 0


def grouped_member(space, **changes):
    """The largest member with stage1.block1 and stage2.block2 grouped (expansion 1)."""
    return space.largest().replace(stage1__block1__expand=1, stage1__block1__dense=0,
                                   stage2__block2__expand=1, stage2__block2__dense=0, **changes)


def test_a_grouped_member_extracts_to_grouped_convs_with_a_shuffle(fbnet_tiny):
    net = randomize_(SuperNet(fbnet_tiny)).eval()
    x = torch.randn(3, 3, 16, 16)
    grouped = grouped_member(fbnet_tiny)
    dense = grouped.replace(stage1__block1__dense=1, stage2__block2__dense=1)
    static = extract(net, grouped)
    with torch.no_grad():
        assert max_diff(static(x), net(x, grouped)) <= 1e-5
        assert max_diff(extract(net, dense)(x), net(x, dense)) <= 1e-5
        assert max_diff(net(x, dense), net(x, grouped)) > 1e-3  # grouping changes the network
    for blk in (static.stages[0][0], static.stages[1][1]):
        assert blk.conv_pw.groups == 2 and blk.conv_pwl.groups == 2
        assert isinstance(blk.shuffle, nn.ChannelShuffle)
    assert static.stages[0][1].conv_pw.groups == 1  # expansion 3: dense
    # each grouped 1x1 conv holds half the dense one's weights
    halved = sum(static.stages[s][b].get_submodule(c).weight.numel()
                 for s, b in ((0, 0), (1, 1)) for c in ("conv_pw", "conv_pwl"))
    assert count_params(fbnet_tiny, dense) - count_params(fbnet_tiny, grouped) == halved
    assert sum(p.numel() for p in static.parameters()) == count_params(fbnet_tiny, grouped)


def test_the_dense_decision_matters_only_at_the_grouped_expansion(fbnet_tiny):
    net = randomize_(SuperNet(fbnet_tiny)).eval()
    x = torch.randn(2, 3, 16, 16)
    at3 = fbnet_tiny.largest().replace(stage1__block2__expand=3)
    with torch.no_grad():
        assert torch.equal(net(x, at3)[-1], net(x, at3.replace(stage1__block2__dense=0))[-1])
    assert count_params(fbnet_tiny, at3) == count_params(
        fbnet_tiny, at3.replace(stage1__block2__dense=0))


def test_a_skip_that_changes_shape_is_a_1x1_conv_with_the_stride(fbnet_tiny):
    net = randomize_(SuperNet(fbnet_tiny)).eval()
    x = torch.randn(3, 3, 16, 16)
    arch = grouped_member(fbnet_tiny, stage2__block1__run=0)
    static = extract(net, arch)
    skip = static.stages[1][0]
    assert type(skip).__name__ == "StaticSkipConv"
    assert (skip.conv.in_channels, skip.conv.out_channels, skip.conv.stride) == (8, 12, (2, 2))
    with torch.no_grad():
        assert max_diff(static(x), net(x, arch)) <= 1e-5
    assert sum(p.numel() for p in static.parameters()) == count_params(fbnet_tiny, arch)
    # relaxed: the skip conv and the grouping both get gradients through their probabilities
    probs = {d.key: torch.full((len(d.choices),), 1 / len(d.choices), requires_grad=True)
             for d in fbnet_tiny.decisions}
    sum(out.square().mean() for out in net(x, probs)).backward()
    assert probs["stage2.block1.run"].grad.abs().sum() > 0
    assert probs["stage2.block1.dense"].grad.abs().sum() > 0
    assert net.stages[1].blocks[0].skip_conv.weight.grad.abs().sum() > 0  # it trains too


def test_analytic_macs_of_grouped_and_skip_conv_members_match_hook_counts(fbnet_tiny):
    from costmodels import build_analytic_table, table_cost
    from tests.costmodels.test_analytic import _hooked_macs

    table = build_analytic_table(fbnet_tiny, "mcu")
    net = SuperNet(fbnet_tiny).eval()
    rng = random.Random(3)
    archs = [grouped_member(fbnet_tiny), grouped_member(fbnet_tiny, stage2__block1__run=0)]
    for arch in archs + [fbnet_tiny.sample(rng) for _ in range(6)]:
        counted, _ = _hooked_macs(extract(net, arch), torch.randn(1, 3, 16, 16))
        assert table_cost(fbnet_tiny, table, arch, "macs") == counted


def test_bad_options_name_the_field():
    base = SearchSpace.from_yaml(SPACES / "fbnet_tiny.yaml").spec
    with pytest.raises(SpaceError, match=r"stages\[0\].skip: must be true or false"):
        SearchSpace({**base, "stages": [{**base["stages"][0], "skip": "yes"}]})
    with pytest.raises(SpaceError, match="head.channels"):
        SearchSpace({**base, "head": {"channels": 0}})
    stage = base["stages"][1]
    for grouped, message in [
        ({"groups": 3, "expand": 1}, r"stages\[1\].grouped: 3 groups do not divide the input "
                                     "width 8"),
        ({"groups": 2, "expand": 3}, r"stages\[1\].grouped.expand: grouped convs are offered "
                                     "at the stage's smallest expand ratio 1, got 3"),
        ({"groups": 1, "expand": 1}, "needs 2 or more groups"),
        ({"groups": 2}, "smallest expand ratio 1, got None"),
    ]:
        with pytest.raises(SpaceError, match=message):
            SearchSpace({**base, "stages": [base["stages"][0], {**stage, "grouped": grouped},
                                            base["stages"][2]]})
    with pytest.raises(SpaceError, match="need one fixed width"):
        SearchSpace({**base, "stages": [base["stages"][0],
                                        {**stage, "widths": [8, 12]}, base["stages"][2]]})
