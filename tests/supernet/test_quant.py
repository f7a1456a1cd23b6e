import pytest
import torch

from supernet.mix import Mix
from supernet.quant import ActQuantizer, lsq_quantize, mixed_weight, quantize_weight


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_weights_lie_on_a_per_channel_symmetric_grid(bits):
    w = torch.randn(6, 4, 3, 3)
    q = quantize_weight(w, bits)
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / qmax
    levels = q / scale
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.abs().max() <= qmax + 1e-3
    # each channel's largest magnitude is exactly representable
    assert torch.allclose(q.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6
    if bits <= 4:
        assert all(len(torch.unique(q[c])) <= 2 * qmax + 1 for c in range(6))


def test_weight_gradient_passes_straight_through():
    w = torch.randn(5, 3, 1, 1, requires_grad=True)
    g = torch.randn_like(w)
    (quantize_weight(w, 4) * g).sum().backward()
    assert torch.allclose(w.grad, g, rtol=1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activations_lie_on_the_learned_step_grid(bits):
    x = torch.randn(4, 3, 5, 5) * 3
    step = torch.tensor(0.37)
    q = lsq_quantize(x, step, bits)
    levels = q / step
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.min() >= -(2 ** (bits - 1)) - 1e-4 and levels.max() <= 2 ** (bits - 1) - 1 + 1e-4


def test_activation_gradients_reach_input_and_step():
    x = torch.randn(8, 4, requires_grad=True)
    step = torch.tensor(0.5, requires_grad=True)
    lsq_quantize(x, step, 4).sum().backward()
    inside = (x / 0.5 > -8) & (x / 0.5 < 7)
    assert torch.equal(x.grad, inside.float())  # STE inside the range, zero where clipped
    assert step.grad is not None and step.grad != 0


def test_thirty_two_bits_is_identity():
    w, x = torch.randn(3, 3, 3, 3), torch.randn(2, 3)
    assert quantize_weight(w, 32) is w
    assert lsq_quantize(x, torch.tensor(0.1), 32) is x
    assert ActQuantizer((8, 32))(x, 32) is x


def test_mixed_bits_is_the_probability_weighted_sum():
    w = torch.randn(4, 2, 3, 3)
    probs = torch.tensor([0.2, 0.5, 0.3])
    mixed = mixed_weight(w, Mix(probs, (2, 4, 32)))
    expect = 0.2 * quantize_weight(w, 2) + 0.5 * quantize_weight(w, 4) + 0.3 * w
    assert torch.allclose(mixed, expect)
    assert torch.equal(mixed_weight(w, Mix(torch.tensor([0.0, 1.0, 0.0]), (2, 4, 32))),
                       quantize_weight(w, 4))


def test_static_quantizer_matches_the_learned_one():
    q = ActQuantizer((4, 8, 32))
    with torch.no_grad():
        q.step.copy_(torch.tensor([0.3, 0.05, 1.0]))
    x = torch.randn(16, 8) * 2
    for bits in (4, 8, 32):
        assert torch.equal(q.static(bits)(x), q(x, bits))


def test_a_mixed_width_mask_commutes_with_the_mixed_quantizer():
    """E over widths of Q(mask_w·x) is mask·Q(x): why the block masks after its quantizers
    (and folds the mask onto the next conv's weight) without changing the expectation."""
    from supernet.mix import prefix_mask
    torch.manual_seed(0)
    quant = ActQuantizer((4, 8, 32))
    x = torch.randn(4, 6, 5, 5)
    bits = Mix(torch.tensor([0.2, 0.5, 0.3]), (4, 8, 32))
    width = Mix(torch.tensor([0.1, 0.6, 0.3]), (2, 4, 6))
    expected = sum(p * quant(x * (torch.arange(6) < w).float().view(1, -1, 1, 1), bits)
                   for p, w in zip(width.probs, width.values, strict=True))
    mask = prefix_mask(width, 6).view(1, -1, 1, 1)
    torch.testing.assert_close(mask * quant(x, bits), expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(quant(mask * x, bits), expected, atol=1e-3)  # the old order


@pytest.mark.parametrize("native_kernels", [True, False])
@pytest.mark.parametrize("bits", [4, 8, 32])
@pytest.mark.parametrize("clip", [None, (0.0, 6.0)])
def test_one_bit_width_runs_the_fused_op_with_lsq_values_and_gradients(native_kernels, bits,
                                                                        clip):
    """A concrete bit-width goes through the fused op as a mix of one: the floats of
    `lsq_quantize` (after ReLU6 where ``clip`` fuses it), and its gradients."""
    from supernet.fused import use_native_kernels

    use_native_kernels(native_kernels)
    try:
        torch.manual_seed(bits)
        quant = ActQuantizer((4, 8, 32))
        x0 = torch.randn(3, 4, 6, 6).contiguous(memory_format=torch.channels_last) * 3
        grad = torch.randn(3, 4, 6, 6)
        got = []
        for fused in (True, False):
            quant.zero_grad()
            x = x0.clone().requires_grad_()
            if fused:
                y = quant(x, bits, clip=clip)
            else:
                v = x if clip is None else torch.nn.ReLU6()(x)
                y = lsq_quantize(v, quant.step[(4, 8, 32).index(bits)], bits)
            y.backward(grad)
            step = quant.step.grad
            got.append((y.detach(), x.grad, torch.zeros(3) if step is None else step.clone()))
        assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])
        torch.testing.assert_close(got[0][2], got[1][2], rtol=1e-5, atol=1e-7)
        assert (got[0][2] != 0).sum() == (bits != 32)  # only the chosen step learns
    finally:
        use_native_kernels(True)
