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
