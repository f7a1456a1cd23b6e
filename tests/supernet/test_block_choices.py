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
    # a skip choice exactly where the identity has the block's shape whatever the decisions
    assert fbnet_tiny.decision("stage1.block1.run").choices == (0, 1)
    assert "stage2.block1.run" not in keys and "stage2.block2.run" in keys
    residual = {b.name: b.residual for b in fbnet_tiny.blocks}
    assert residual["stage1.block1"] and not residual["stage2.block1"]


def test_every_fbnet_space_parses_with_its_published_shape():
    for name in ("fbnet_cifar32", "fbnet_imagenet224"):
        space = SearchSpace.from_yaml(SPACES / f"{name}.yaml")
        assert len(space.blocks) == 22 and space.head_channels == 1504
        assert sum(b.run is not None for b in space.blocks) == 16  # 6 blocks change shape


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


def test_bad_options_name_the_field():
    base = SearchSpace.from_yaml(SPACES / "fbnet_tiny.yaml").spec
    with pytest.raises(SpaceError, match=r"stages\[0\].skip: must be true or false"):
        SearchSpace({**base, "stages": [{**base["stages"][0], "skip": "yes"}]})
    with pytest.raises(SpaceError, match="head.channels"):
        SearchSpace({**base, "head": {"channels": 0}})
