"""The fused mixed quantizers against the per-bit-width reference they replace."""

import pytest
import torch

from supernet.elastic import kernel_mask
from supernet.fused import compiled_kernels, kernels, mixed_act_quant, mixed_weight_quant
from supernet.mix import Mix, prefix_mask
from supernet.quant import ActQuantizer, mixed_weight_reference

BIT_SETS = [(4,), (8,), (32,), (2, 4), (4, 8, 32), (32, 8, 2)]


def probabilities(n: int, kind: str, dtype=torch.float32) -> torch.Tensor:
    if kind == "mixed":
        return torch.softmax(torch.randn(n, dtype=dtype), -1)
    return torch.eye(n, dtype=dtype)[int(kind)]  # one-hot at that index


def cases():
    for bits in BIT_SETS:
        kinds = ["mixed"] + [str(i) for i in range(len(bits))]
        for kind in kinds:
            yield bits, kind


def leaves(*ts):
    return [t.detach().clone().requires_grad_() for t in ts]


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    scale = b.abs().max().clamp_min(1e-12)
    assert (a - b).abs().max() <= rtol * scale, (a, b)


@pytest.mark.parametrize(("bits", "kind"), list(cases()))
def test_fused_activation_quantizer_equals_the_reference(bits, kind):
    torch.manual_seed(len(bits) * 10 + len(kind))
    quant = ActQuantizer(bits)
    with torch.no_grad():
        quant.step.mul_(torch.rand(len(bits)) + 0.5)
    x0 = torch.randn(3, 5, 4, 4) * 3
    p0 = probabilities(len(bits), kind)
    grad = torch.randn_like(x0)
    results = []
    for run in (quant.forward, quant.reference):
        quant.zero_grad()
        x, p = leaves(x0, p0)
        y = run(x, Mix(p, bits))
        y.backward(grad)
        step_grad = quant.step.grad  # None when only 32 bits (no quantizer) is in the mix
        step_grad = torch.zeros(len(bits)) if step_grad is None else step_grad.clone()
        results.append((y.detach(), x.grad, p.grad, step_grad))
    (y, gx, gp, gs), (y_ref, gx_ref, gp_ref, gs_ref) = results
    assert torch.equal(y, y_ref)  # forward: exactly the same floats
    for a, b in ((gx, gx_ref), (gp, gp_ref), (gs, gs_ref)):
        assert_close_rel(a, b, 1e-6)
    if kind != "mixed" and bits[int(kind)] != 32:
        assert gs[int(kind)] != 0  # the chosen bit-width's step learns


@pytest.mark.parametrize(("bits", "kind"), list(cases()))
def test_fused_weight_quantizer_equals_the_reference(bits, kind):
    torch.manual_seed(len(bits))
    w0 = torch.randn(6, 4, 3, 3)
    p0 = probabilities(len(bits), kind)
    grad = torch.randn_like(w0)
    out = []
    for run in (lambda w, p: mixed_weight_quant(w, p, bits),
                lambda w, p: mixed_weight_reference(w, Mix(p, bits))):
        w, p = leaves(w0, p0)
        y = run(w, p)
        y.backward(grad)
        out.append((y.detach(), w.grad, p.grad))
    assert torch.equal(out[0][0], out[1][0])
    for a, b in zip(out[0][1:], out[1][1:], strict=True):
        assert_close_rel(a, b, 1e-6)


@pytest.mark.parametrize("bits", BIT_SETS)
def test_float64_gradients_match_the_reference_and_gradcheck(bits):
    """Rounding is piecewise constant, so finite differences can only check what the op
    differentiates for real: the probabilities (the sum is linear in them) and x at 32 bits.
    The straight-through gradients of x and of the steps are checked against the reference."""
    torch.manual_seed(7)
    x0 = torch.randn(2, 3, 3, dtype=torch.float64) * 2
    steps0 = torch.rand(len(bits), dtype=torch.float64) * 0.3 + 0.05
    p0 = probabilities(len(bits), "mixed", torch.float64)
    grad = torch.randn_like(x0)
    got = []
    for fused in (True, False):
        x, steps, p = leaves(x0, steps0, p0)
        if fused:
            y = mixed_act_quant(x, steps, p, bits)
        else:
            q = ActQuantizer(bits).double()
            with torch.no_grad():
                q.step.copy_(steps0)
            y = q.reference(x, Mix(p, bits))
            steps = q.step
        y.backward(grad)
        d_steps = torch.zeros_like(steps0) if steps.grad is None else steps.grad
        got.append((y.detach(), x.grad, d_steps, p.grad))
    assert torch.equal(got[0][0], got[1][0])
    for a, b in zip(got[0][1:], got[1][1:], strict=True):
        assert_close_rel(a, b, 1e-12)
    x = x0.clone().requires_grad_(bits == (32,))
    p = p0.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: mixed_act_quant(x, steps0, p, bits), (x, p))
    w = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=bits == (32,))
    assert torch.autograd.gradcheck(lambda w, p: mixed_weight_quant(w, p, bits), (w, p))


def test_activation_quantizer_accepts_a_mix_in_another_order():
    quant = ActQuantizer((4, 8, 32))
    x = torch.randn(2, 3, 4, 4)
    p = torch.tensor([0.5, 0.3, 0.2])
    expect = quant.reference(x, Mix(p, (32, 4, 8)))
    assert torch.equal(quant(x, Mix(p, (32, 4, 8))), expect)


def test_masks_are_computed_once_per_mix_and_match_their_definition():
    width = Mix(torch.tensor([0.2, 0.3, 0.5]), (2, 4, 6))
    mask = prefix_mask(width, 6)
    assert prefix_mask(width, 6) is mask  # cached on the mix: once per pass
    expect = torch.tensor([1.0, 1.0, 0.8, 0.8, 0.5, 0.5])  # P(width > c)
    assert torch.allclose(mask, expect)
    kernel = Mix(torch.tensor([0.25, 0.75]), (3, 5))
    km = kernel_mask(kernel, 5, torch.zeros(1))
    assert kernel_mask(kernel, 5, torch.zeros(1)) is km
    assert km[2, 2] == 1 and km[1, 3] == 1 and km[0, 0] == 0.75 and km[0, 2] == 0.75


def test_kernel_choice_is_scoped_to_its_block():
    assert not compiled_kernels()
    with kernels(compiled=False):
        assert not compiled_kernels()
    assert not compiled_kernels()


@pytest.mark.slow
def test_compiled_kernels_equal_the_eager_ones():
    """torch.compile builds each kernel as one loop (about a minute on a small CPU)."""
    torch.manual_seed(3)
    bits = (4, 8, 32)
    x0, w0 = torch.randn(4, 6, 5, 5) * 2, torch.randn(8, 6, 3, 3)
    steps0, p0 = torch.tensor([0.4, 0.03, 1.0]), torch.softmax(torch.randn(3), -1)
    got = []
    for compiled in (False, True):
        with kernels(compiled=compiled):
            x, w, steps, p = leaves(x0, w0, steps0, p0)
            y = mixed_act_quant(x, steps, p, bits)
            v = mixed_weight_quant(w, p, bits)
            (y.square().sum() + v.square().sum()).backward()
        got.append((y.detach(), v.detach(), x.grad, w.grad, steps.grad, p.grad))
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])
    for a, b in zip(got[0][2:], got[1][2:], strict=True):
        assert_close_rel(a, b, 1e-5)
