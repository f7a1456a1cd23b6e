"""A member extracted from the supernet must be the supernet at that config, only smaller."""

import random

import pytest
import torch
from torch import nn

from supernet import SuperNet, count_params, extract
from supernet.quant import FakeQuantAct


def randomize_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so equality tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.fixture(params=["tiny_space", "fmnist_space"])
def space(request):
    return request.getfixturevalue(request.param)


def test_extracted_member_equals_supernet_and_counts_its_params(space):
    net = randomize_(SuperNet(space)).eval()
    x = torch.randn(4, space.input_channels, space.input_size, space.input_size)
    rng = random.Random(0)
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(12)]:
        static = extract(net, arch)
        with torch.no_grad():
            assert max_diff(static(x), net(x, arch)) <= 1e-5
        assert sum(p.numel() for p in static.parameters()) == count_params(space, arch)


def test_extracted_member_has_no_elastic_machinery_and_really_is_smaller(fmnist_space):
    net = SuperNet(fmnist_space)
    small = extract(net, fmnist_space.smallest())
    allowed = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU6, FakeQuantAct, nn.Identity,
               nn.AdaptiveAvgPool2d, nn.Flatten, nn.Sequential, nn.ModuleList, nn.ModuleDict)
    for m in small.modules():
        assert isinstance(m, allowed) or type(m).__module__ == "supernet.blocks" \
            or type(m).__name__ == "StaticNet", type(m)
    assert sum(p.numel() for p in small.parameters()) < 0.05 * sum(
        p.numel() for p in net.parameters())
    assert len(small(torch.randn(2, 1, 28, 28))) == 1  # exits at the first exit stage


def test_relaxed_forward_with_one_hot_probabilities_equals_the_concrete_forward(space):
    # seeded: on rare inputs a last-ulp difference between the full-width and the sliced
    # convolution moves a value across a quantizer's rounding boundary
    torch.manual_seed(0)
    net = randomize_(SuperNet(space))
    x = torch.randn(6, space.input_channels, space.input_size, space.input_size)
    rng = random.Random(1)
    for train in (False, True):
        net.train(train)
        for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(8)]:
            concrete = net(x, arch)
            relaxed = net(x, space.one_hot(arch))  # all exits; the concrete run stops earlier
            assert max_diff(concrete, relaxed[: len(concrete)]) <= 1e-5


def test_relaxed_forward_gives_gradients_to_every_probability(tiny_space):
    net = randomize_(SuperNet(tiny_space)).train()
    probs = {d.key: torch.full((len(d.choices),), 1 / len(d.choices), requires_grad=True)
             for d in tiny_space.decisions}
    x = torch.randn(8, 1, 16, 16)
    logits = net(x, probs)
    sum(out.square().mean() for out in logits).backward()
    # the exit decision only weighs losses (in the search), so it does not shape the forward
    for key, p in probs.items():
        if key != "exit" and len(p) > 1:
            assert p.grad is not None and p.grad.abs().sum() > 0, key


def test_extraction_keeps_mode_and_does_not_share_tensors(tiny_space):
    net = SuperNet(tiny_space).train()
    static = extract(net, tiny_space.largest())
    assert static.training
    with torch.no_grad():
        for p in static.parameters():
            p.add_(1.0)
    again = extract(net, tiny_space.largest())
    assert not torch.equal(next(static.parameters()), next(again.parameters()))
