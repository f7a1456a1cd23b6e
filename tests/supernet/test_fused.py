"""The fused mixed quantizers against the per-bit-width reference they replace."""

import math

import pytest
import torch

from supernet import native
from supernet.elastic import kernel_mask
from supernet.fused import (
    act_backward,
    act_forward,
    compiled_kernels,
    kernels,
    mixed_act_quant,
    mixed_weight_quant,
    native_act_backward,
    native_act_forward,
    native_weight_backward,
    native_weight_forward,
    quant_kernels,
    use_native_kernels,
    weight_backward,
    weight_forward,
)
from supernet.mix import Mix, prefix_mask
from supernet.quant import ActQuantizer, mixed_weight_reference, quantize_weight

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
    assert_close_rel(out[0][1], out[1][1], 1e-6)
    # ⟨grad, Q_b(w)⟩ against the float32 grid summed in float64 (the reference's own float32 sum
    # is off by about 1e-6 of its value)
    exact = torch.stack([(grad.double() * quantize_weight(w0, b).double()).sum() for b in bits])
    assert_close_rel(out[0][2].double(), exact, 1e-6)


@pytest.fixture(autouse=True)
def _native_kernels_restored():
    yield
    use_native_kernels(True)


@pytest.mark.parametrize("native_kernels", [True, False])
@pytest.mark.parametrize("bits", BIT_SETS)
def test_float64_gradients_match_the_reference_and_gradcheck(bits, native_kernels):
    """Rounding is piecewise constant, so finite differences can only check what the op
    differentiates for real: the probabilities (the sum is linear in them) and x at 32 bits.
    The straight-through gradients of x and of the steps are checked against the reference."""
    use_native_kernels(native_kernels)
    assert quant_kernels() == ("native" if native_kernels and native.library() else "eager")
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
    use_native_kernels(False)  # eager on both sides but for the compile
    torch.manual_seed(3)
    bits = (4, 8, 32)
    x0, w0 = torch.randn(4, 6, 5, 5) * 2, torch.randn(8, 6, 3, 3)
    steps0, p0 = torch.tensor([0.4, 0.03, 1.0]), torch.softmax(torch.randn(3), -1)
    got = []
    for compiled in (False, True):
        with kernels(compiled=compiled):
            x, w, steps, p = leaves(x0, w0, steps0, p0)
            y = mixed_act_quant(x, steps, p, bits)
            r = mixed_act_quant(x, steps, p, bits, clip=(0.0, 6.0))  # a fused ReLU6
            v = mixed_weight_quant(w, p, bits)
            (y.square().sum() + r.pow(3).sum() + v.square().sum()).backward()
        got.append((y.detach(), r.detach(), v.detach(), x.grad, w.grad, steps.grad, p.grad))
    for a, b in zip(got[0][:3], got[1][:3], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(got[0][3:], got[1][3:], strict=True):
        assert_close_rel(a, b, 1e-5)


# -- native CPU kernels ---------------------------------------------------------------------------
@pytest.fixture
def native_on():
    if native.library() is None:
        pytest.skip("no C++ compiler to build the native kernels")
    use_native_kernels(True)
    assert quant_kernels() == "native"


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """The tensor's floats as integers, so -0.0 and NaN payloads count."""
    view = {torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype]
    return t.contiguous().view(view)


def tricky(shape, steps: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Random values, plus exact rounding ties (k + ½)·s and values far past the clamp range."""
    x = torch.randn(shape, dtype=dtype) * 3
    flat = x.view(-1)
    k = torch.arange(-40, 40, dtype=dtype) + 0.5
    for i, s in enumerate(steps.abs().tolist()):
        flat[i * 160:i * 160 + 80] = k * s
        flat[i * 160 + 80:i * 160 + 90] = torch.tensor([1e6, -1e6, 1e30, -1e30, 0.0, -0.0,
                                                        129.0 * s, -129.0 * s, 7.5 * s, -2.5 * s])
    return x


NATIVE_BITS = [(32,), (4, 8, 32), (2, 3, 8)]
WIDE_MIX = (2, 3, 4, 6, 8, 32)  # more bit-widths than the unrolled loops take (1 to 4)


def native_cases():
    for bits in NATIVE_BITS:
        for kind in ["mixed"] + [str(i) for i in range(len(bits))]:
            for layout in (torch.contiguous_format, torch.channels_last):
                yield bits, kind, layout
    yield WIDE_MIX, "mixed", torch.contiguous_format


@pytest.fixture(params=["avx2", "scalar"])
def native_loops(native_on, request):
    """The native kernels with their float32 AVX2 loops, then with their scalar ones."""
    lib = native.library()
    if lib.hwnas_use_avx2(request.param == "avx2") != (request.param == "avx2"):
        lib.hwnas_use_avx2(1)
        pytest.skip("this CPU has no AVX2")
    yield request.param
    lib.hwnas_use_avx2(1)


CLIPS = [None, (0.0, 6.0), (0.0, math.inf)]  # none, a fused ReLU6, a fused ReLU


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize(("bits", "kind", "layout"), list(native_cases()))
def test_native_kernels_equal_the_eager_ones(native_loops, bits, kind, layout, clip):
    """Forward and ∂/∂x: the same bits as eager in float32; the step and probability sums
    (in double) within 1e-6 of eager in float64 on the same values."""
    torch.manual_seed(11 + len(bits))
    steps = torch.tensor([0.25, -0.0625, 1.0, 0.5, 0.125, 1.0])[:len(bits)]  # 2^k: exact ties
    x = tricky((4, 6, 9, 7), steps).contiguous(memory_format=layout)
    if clip is not None:  # the clamp's edges, exactly
        x[0, 0, 0, :4] = torch.tensor([0.0, 6.0, 5.999, 6.001])
    p = probabilities(len(bits), kind)
    grad = torch.randn(x.shape).contiguous(memory_format=layout)
    y = native_act_forward(x, steps, p, bits, clip)
    assert y.stride() == x.stride()
    assert torch.equal(bits_of(y), bits_of(act_forward(x, steps, p, bits, clip)))
    d_x, d_steps, d_probs = native_act_backward(grad, x, steps, p, bits, clip)
    d_x_ref = act_backward(grad, x, steps, p, bits, clip)[0]
    assert torch.equal(bits_of(d_x), bits_of(d_x_ref))
    x64, s64, p64, g64 = x.double(), steps.double(), p.double(), grad.double()
    ref64 = act_backward(g64, x64, s64, p64, bits, clip)
    assert_close_rel(d_steps.double(), ref64[1], 1e-6)
    assert_close_rel(d_probs.double(), ref64[2], 1e-6)
    # in float64 the native kernels agree with eager up to the summation order
    assert torch.equal(bits_of(native_act_forward(x64, s64, p64, bits, clip)),
                       bits_of(act_forward(x64, s64, p64, bits, clip)))
    got64 = native_act_backward(g64, x64, s64, p64, bits, clip)
    assert torch.equal(bits_of(got64[0]), bits_of(ref64[0]))
    for a, b in zip(got64[1:], ref64[1:], strict=True):
        assert_close_rel(a, b, 1e-12)


def tricky_weight(shape, dtype=torch.float32) -> torch.Tensor:
    """Random channels, plus a channel of exact rounding ties at 4 bits (peak 1.75: scale ¼),
    a zero channel (the scale's floor) and a NaN channel."""
    w = torch.randn(shape, dtype=dtype)
    tie = w[0].view(-1)
    tie[:] = 0.125 * (2 * (torch.arange(tie.numel()) % 14) - 13).to(dtype)  # (k + ½)·¼
    tie[0] = 1.75
    w[1] = 0.0
    w[2].view(-1)[3] = math.nan
    return w


WEIGHT_SHAPES = [(5, 4, 3, 3), (6, 1, 5, 5), (7, 12)]  # dense conv, depthwise, linear


@pytest.mark.parametrize("bits", [(4,), (32,), (2, 4, 8), (8, 32, 4)])
@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_weight_kernels_equal_the_eager_ones(native_on, bits, shape, dtype):
    """Forward: the same bits as eager (channels_last too); ∂/∂w = grad·Σp to rounding;
    ⟨grad, Q_b(w)⟩ equal to the eager grid's products summed in double."""
    torch.manual_seed(len(shape) + len(bits))
    w = tricky_weight(shape, dtype)
    p = probabilities(len(bits), "mixed", dtype)
    grad = torch.randn(shape, dtype=dtype)
    layouts = [torch.contiguous_format] + [torch.channels_last] * (len(shape) == 4)
    for layout in layouts:
        wl, gl = w.contiguous(memory_format=layout), grad.contiguous(memory_format=layout)
        y = native_weight_forward(wl, p, bits)
        assert y.stride() == wl.stride()
        assert torch.equal(bits_of(y), bits_of(weight_forward(wl, p, bits)))
        d_w, d_probs = native_weight_backward(gl, wl, p, bits)
        ref_w, ref_p = weight_backward(gl, wl, p, bits)
        assert_close_rel(d_w, ref_w, 1e-6 if dtype == torch.float32 else 1e-15)
        finite = torch.isfinite(w).flatten(1).all(1)  # the NaN channel's sums are NaN alike
        exact = torch.stack([(grad[finite].double() * weight_forward(
            w, torch.ones(1, dtype=dtype), (b,))[finite].double()).sum() for b in bits])
        assert torch.isnan(d_probs).all() == (not finite.all())
        clean = native_weight_backward(grad[finite], w[finite], p, bits)[1]
        assert_close_rel(clean.double(), exact, 1e-6 if dtype == torch.float32 else 1e-12)


def test_the_native_backward_finishes_every_gradient_in_its_call(native_on):
    """Steps, probabilities and x (and a weight and its probabilities) get their gradients from
    one kernel call per quantizer."""
    from torch.profiler import ProfilerActivity, profile

    x, steps, p = leaves(torch.randn(2, 3, 4, 4), torch.tensor([0.2, 0.05, 1.0]),
                         torch.tensor([0.3, 0.3, 0.4]))
    w = leaves(torch.randn(4, 3, 3, 3))[0]
    y = mixed_act_quant(x, steps, p, (4, 8, 32)).sum() + mixed_weight_quant(w, p, (4, 8, 32)).sum()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y.backward()
    names = [e.name for e in prof.events()]
    assert names.count("hwnas::act_backward") == 1 and names.count("hwnas::weight_backward") == 1
    assert x.grad is not None and w.grad is not None
    assert steps.grad[2] == 0 and (steps.grad[:2] != 0).all() and (p.grad != 0).all()


def test_native_kernels_take_a_strided_input_and_a_gradient_in_another_layout(native_loops):
    bits, steps, p = (2, 8, 32), torch.tensor([0.3, 0.02, 1.0]), torch.tensor([0.2, 0.5, 0.3])
    x = torch.randn(3, 8, 5, 5)[:, ::2]  # not dense
    grad = torch.randn(3, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    assert torch.equal(native_act_forward(x, steps, p, bits), act_forward(x, steps, p, bits))
    got, ref = native_act_backward(grad, x, steps, p, bits), act_backward(grad, x, steps, p, bits)
    assert torch.equal(got[0], ref[0])
    for a, b in zip(got[1:], ref[1:], strict=True):
        assert_close_rel(a, b, 1e-5)


@pytest.mark.parametrize("bits", [(32,), (4, 8, 32), (2, 4, 8, 32), WIDE_MIX])
@pytest.mark.parametrize("clip", CLIPS)
def test_avx2_loops_give_the_scalar_loops_bits(native_on, bits, clip):
    """Forward, ∂/∂x and the double sums alike, over a tail of fewer than 8 elements and 2
    threads' chunks."""
    lib = native.library()
    if not lib.hwnas_use_avx2(1):
        pytest.skip("this CPU has no AVX2")
    torch.manual_seed(3)
    steps = torch.tensor([0.25, -0.0625, 1.0, 0.5, 0.125, 1.0])[:len(bits)]
    x = tricky((5, 3, 67, 71), steps)  # 71 355 elements: 3 left after the 8-element steps
    grad, p = torch.randn_like(x), probabilities(len(bits), "mixed")
    before, got = torch.get_num_threads(), []
    try:
        torch.set_num_threads(2)
        for enabled in (1, 0):
            assert lib.hwnas_use_avx2(enabled) == enabled
            got.append((native_act_forward(x, steps, p, bits, clip),
                        *native_act_backward(grad, x, steps, p, bits, clip)))
    finally:
        lib.hwnas_use_avx2(1)
        torch.set_num_threads(before)
    for a, b in zip(*got, strict=True):
        assert torch.equal(bits_of(a), bits_of(b))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_threads_change_only_the_summation_order(native_on, dtype):
    torch.manual_seed(5)
    bits, steps = (2, 4, 8, 32), torch.tensor([0.4, 0.1, 0.01, 1.0], dtype=dtype)
    x = torch.randn(7, 3, 101, 67, dtype=dtype) * 2  # 142 k elements: 2 and 3 chunks
    grad, p = torch.randn_like(x), torch.softmax(torch.randn(4, dtype=dtype), -1)
    before, got = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            got.append((native_act_forward(x, steps, p, bits),
                        *native_act_backward(grad, x, steps, p, bits)))
    finally:
        torch.set_num_threads(before)
    for other in got[1:]:
        assert torch.equal(other[0], got[0][0]) and torch.equal(other[1], got[0][1])
        for a, b in zip(other[2:], got[0][2:], strict=True):
            assert_close_rel(a, b, 1e-12)


def test_without_native_kernels_the_eager_ones_run_after_one_warning(monkeypatch, tmp_path):
    x, steps, p = torch.randn(2, 3, 4, 4), torch.tensor([0.2, 1.0]), torch.tensor([0.7, 0.3])
    expect = act_forward(x, steps, p, (4, 32))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for switch in ("env", "compiler"):
        if switch == "env":
            monkeypatch.setenv(native.SWITCH, "0")
        else:
            monkeypatch.delenv(native.SWITCH)
            monkeypatch.setattr(native, "compiler", lambda: None)
        native.library.cache_clear()
        try:
            with pytest.warns(RuntimeWarning, match="native CPU quantizer kernels off") as caught:
                assert quant_kernels() == "eager"
                y = mixed_act_quant(x, steps, p, (4, 32))
                assert quant_kernels() == "eager"
            assert len(caught) == 1
            assert torch.equal(y, expect)
        finally:
            native.library.cache_clear()
    assert not any(tmp_path.iterdir())  # nothing was built


def test_native_build_is_cached_by_source_and_flags(monkeypatch, tmp_path):
    if native.compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = native.build()
    assert path.is_relative_to(tmp_path / "hwnas" / "kernels") and path.exists()
    built = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == built  # reused
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_a_failed_build_prints_one_line_and_never_fails_the_install(monkeypatch, tmp_path,
                                                                   capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    assert native.main(["--build"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "not built (false failed on fake_quant.cpp" in out[0]
    assert not list((tmp_path / "hwnas" / "kernels").rglob("*.so*"))  # no partial file left


@pytest.mark.parametrize("native_kernels", [True, False])
@pytest.mark.parametrize("act", [torch.nn.ReLU6(), torch.nn.ReLU()])
def test_a_fused_activation_equals_the_activation_then_the_quantizer(native_kernels, act):
    """``clip`` runs ReLU6/ReLU inside the mixed quantizer: the same values and gradients
    (x, steps, probabilities) as the activation module followed by the quantizer."""
    from supernet.blocks import act_clip

    use_native_kernels(native_kernels)
    torch.manual_seed(3)
    bits = (4, 8, 32)
    quant = ActQuantizer(bits)
    x0 = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last) * 4
    p0, grad = probabilities(3, "mixed"), torch.randn(4, 6, 5, 5)
    got = []
    for fused in (True, False):
        quant.zero_grad()
        x, p = leaves(x0, p0)
        y = quant(x, Mix(p, bits), clip=act_clip(act)) if fused else quant(act(x), Mix(p, bits))
        y.backward(grad)
        got.append((y.detach(), x.grad, p.grad, quant.step.grad.clone()))
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])
    for a, b in zip(got[0][2:], got[1][2:], strict=True):
        assert_close_rel(a, b, 1e-5)
    assert (got[0][1] == 0).any() and (got[0][1] != 0).any()  # the clamp's gradient is there


@pytest.mark.parametrize("native_kernels", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8, 32])
def test_a_concrete_weight_bit_width_runs_as_a_mix_of_one(native_kernels, bits):
    """`mixed_weight` at one bit-width: `quantize_weight`'s floats; the straight-through
    gradient to the rounding of (g·s)/s that the unfused chain takes."""
    from supernet.quant import mixed_weight

    use_native_kernels(native_kernels)
    torch.manual_seed(bits)
    w0 = torch.randn(6, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(w0)
    (w, ), (v, ) = leaves(w0), leaves(w0)
    y, ref = mixed_weight(w, bits), quantize_weight(v, bits)
    assert torch.equal(y, ref)
    if bits == 32:
        assert y is w
        return
    (y * grad).sum().backward()
    (ref * grad).sum().backward()
    assert_close_rel(w.grad, v.grad, 1e-6)


def test_native_kernels_refuse_steps_or_probabilities_they_would_misread(native_on):
    x, w = torch.randn(2, 3, 4, 4), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="2 steps/probabilities in torch.float32"):
        native_act_forward(x, torch.tensor([0.1, 1.0], dtype=torch.float64),
                           torch.tensor([0.5, 0.5]), (4, 32))
    with pytest.raises(ValueError, match="got 3 in torch.float32"):
        native_weight_forward(w, torch.tensor([0.2, 0.3, 0.5]), (4, 8))
