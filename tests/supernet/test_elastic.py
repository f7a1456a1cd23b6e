"""Elastic layers against their plain-torch meaning."""

import pytest
import torch
import torch.nn.functional as F

from supernet.elastic import ElasticConv2d
from supernet.mix import Mix


@pytest.mark.parametrize("depthwise", [False, True])
def test_an_input_mask_folded_onto_the_weight_equals_masking_the_input(depthwise):
    torch.manual_seed(0)
    conv = ElasticConv2d(6, 6, 3, stride=2, depthwise=depthwise)
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    m = torch.rand(6, requires_grad=True)
    bits = Mix(torch.tensor([0.3, 0.7]), (8, 32))
    folded = conv(x, 6, 3, bits, in_mask=m)
    masked = conv(x * m.view(1, -1, 1, 1), 6, 3, bits)
    torch.testing.assert_close(folded, masked, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(folded)
    got = torch.autograd.grad(folded, (x, m, conv.weight), g)
    want = torch.autograd.grad(masked, (x, m, conv.weight), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    plain = F.conv2d(x * m.view(1, -1, 1, 1), conv._weight(6, 6, 3, bits), stride=2, padding=1,
                     groups=6 if depthwise else 1)
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-6)


def test_the_relaxed_network_is_the_same_with_its_activations_fused_into_the_quantizers(
        tiny_space):
    """Blocks run ReLU6 inside their mixed quantizers (`act_clip`); with the fusion off, the
    same logits and gradients."""
    from supernet import SuperNet
    from supernet.blocks import ElasticInvertedResidual

    torch.manual_seed(0)
    net = SuperNet(tiny_space)
    probs = {d.key: torch.softmax(torch.randn(len(d.choices)), -1) for d in tiny_space.decisions}
    x = torch.randn(4, 1, 16, 16)
    blocks = [m for m in net.modules() if isinstance(m, ElasticInvertedResidual)]
    assert blocks and all(b.clip == (0.0, 6.0) for b in blocks)
    runs = []
    for fused in (True, False):
        for b in blocks:
            b.clip = (0.0, 6.0) if fused else None
        net.zero_grad()
        loss = sum(z.square().mean() for z in net(x, probs))
        loss.backward()
        runs.append([loss.detach()] + [p.grad.clone() for p in net.parameters()
                                       if p.grad is not None])
    assert len(runs[0]) == len(runs[1]) > 10
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_choice_masks_are_cached_eagerly_and_built_afresh_inside_a_compile_trace(monkeypatch):
    """Inside a trace the masks are built, not read from the cache (the compiler would warn),
    with the same values."""
    from supernet.mix import choice_masks

    args = ("window", (3, 5), 5, torch.device("cpu"), torch.float32)
    eager = choice_masks(*args)
    assert choice_masks(*args) is eager  # cached
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = choice_masks(*args)
    assert traced is not eager and torch.equal(traced, eager)
    assert eager.sum(1).tolist() == [9, 25]  # the centred 3x3 and the whole 5x5 window


def test_compiling_a_pass_that_builds_masks_gives_no_cache_notice():
    """A compiled relaxed pass builds its masks in the graph: dynamo has no cache wrapper to
    warn about ("Dynamo detected a call to a functools.lru_cache-wrapped function")."""
    import warnings

    from supernet.mix import choice_masks

    expected = torch.tensor([0.25, 0.75]) @ choice_masks("prefix", (1, 2), 2,
                                                        torch.device("cpu"), torch.float32)
    traced = torch.compile(lambda p: p @ choice_masks("prefix", (1, 2), 2, p.device, p.dtype),
                           backend="eager", fullgraph=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = traced(torch.tensor([0.25, 0.75]))
    assert torch.equal(got, expected)
    assert not [w for w in caught if "lru_cache" in str(w.message)]
