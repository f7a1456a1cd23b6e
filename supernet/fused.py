"""Fused mixed-precision fake quantizers: Σ_b p_b·Q_b(x) as one autograd op.

The relaxed network mixes every candidate bit-width (EdMIPS). Written as one quantizer per
bit-width and a weighted sum, each activation costs a dozen autograd nodes and a saved copy per
bit-width; it dominated the relaxed step. Here the sum is one `torch.autograd.Function` whose
backward returns the gradients of ``x``, of every probability ``p_b`` and of every learned step
``s_b`` in one call, saving only ``x``. The ReLU/ReLU6 before a quantizer can run inside it
(``clip``), and a concrete bit-width runs as a mix of one, so every activation quantizer of
the search (relaxed pass and sandwich members) is one pass each way.

Which kernels run (`quant_kernels` tells):
- eager: plain torch ops, any device and dtype, the exact reference values; about ten passes
  over the tensor per bit-width.
- native (the default on CPU in float32/float64): ``csrc/fake_quant.cpp``, each direction in
  one pass (the activations' threads: ``torch.get_num_threads()``), the same floats as eager
  (forwards and ∂/∂x bit-identical, the step and probability sums in double), the step and
  probability gradients finished inside the call; built on first use with the system C++
  compiler (`supernet.native`), eager when it cannot be built or with
  ``HWNAS_NATIVE_KERNELS=0``; `use_native_kernels` switches it. Each call is one profiler
  event (``hwnas::act_forward``…).
- compiled: after `use_compiled_kernels` (or inside `kernels(compiled=True)`), a
  `torch.compile`d build of the eager kernels, one fused loop each, for every op and device
  (needs a C++ compiler on CPU, Triton on CUDA; compiled once per process, shapes dynamic);
  it wins over native when asked for.
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator

import torch
from torch._C._autograd import _profiler_enabled

FLOAT_BITS = 32
MIN_STEP = 1e-8  # floor of a learned activation step, so x/s stays finite
Clip = tuple[float, float] | None  # (lo, hi) of a ReLU/ReLU6 fused before a quantizer


def _bounds(bits: int) -> tuple[int, int]:
    """Signed integer range (−qn, qp) of ``bits``-bit codes."""
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


# -- activations (LSQ, learned step per bit-width) ---------------------------------------------
def act_forward(x: torch.Tensor, steps: torch.Tensor, probs: torch.Tensor,
                bits: tuple[int, ...], clip: Clip = None) -> torch.Tensor:
    """Σ_b p_b · s_b·clamp(round(x/s_b), −qn, qp) with s_b = max(|steps_b|, MIN_STEP); 32 bits
    contributes p_b·x. The reference's float ops in its order, so the values are identical.
    ``clip`` (lo, hi) first clamps x: the ReLU or ReLU6 before the quantizer, fused into it."""
    steps = steps.abs().clamp_min(MIN_STEP)
    if clip is not None:
        x = x.clamp(*clip)
    out = None
    for i, b in enumerate(bits):
        if b >= FLOAT_BITS:
            term = probs[i] * x
        else:
            qn, qp = _bounds(b)
            term = torch.div(x, steps[i]).round_().clamp_(-qn, qp).mul_(steps[i]).mul_(probs[i])
        out = term if out is None else out.add_(term)
    return out


def act_backward(grad: torch.Tensor, x: torch.Tensor, steps: torch.Tensor, probs: torch.Tensor,
                 bits: tuple[int, ...], clip: Clip = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of x (straight-through inside each range, weighed by p_b; with ``clip``, zero
    where x is not strictly inside (lo, hi), as ReLU's and ReLU6's backward), of the steps (LSQ,
    scaled by 1/sqrt(numel per sample · qp)) and of the probabilities (⟨grad, Q_b(x)⟩)."""
    per_sample = x[0].numel()
    raw_x = x
    if clip is not None:
        x = x.clamp(*clip)
    raw, steps = steps, steps.abs().clamp_min(MIN_STEP)
    slope, d_steps, d_probs = None, [], []
    for i, b in enumerate(bits):
        if b >= FLOAT_BITS:
            d_probs.append((grad * x).sum())
            d_steps.append(torch.zeros_like(steps[i]))
            inside = probs[i]
        else:
            qn, qp = _bounds(b)
            scaled = torch.div(x, steps[i])
            clipped = scaled.clamp(-qn, qp)
            keep = clipped == scaled  # inside the range: straight-through
            codes = clipped.round_()
            d_probs.append((grad * codes).sum() * steps[i])  # ⟨grad, Q_b(x)⟩
            # d(s·q)/ds = q − x/s inside the range, the bound outside (LSQ); p_b weighs it
            d_step = (grad * codes.sub_(scaled.mul_(keep))).sum()
            d_steps.append(d_step * probs[i] / math.sqrt(per_sample * qp))
            inside = keep * probs[i]
        slope = inside if slope is None else slope + inside
    # through |s| and the floor, as autograd differentiates abs() and clamp_min()
    d_raw = torch.stack(d_steps) * raw.sgn() * (raw.abs() >= MIN_STEP)
    d_x = grad * slope
    if clip is not None:
        d_x = torch.where((raw_x > clip[0]) & (raw_x < clip[1]), d_x, 0.0)
    return d_x, d_raw, torch.stack(d_probs)


# -- native CPU kernels (csrc/fake_quant.cpp): each direction in one pass over the tensor ------
NATIVE_DTYPES = {torch.float32: "_f32", torch.float64: "_f64"}
NATIVE_MAX_BITS = 16  # bit-widths in one mix the native kernels take


def _native_library():
    """`supernet.native.library()`, imported on first use (``python -m supernet.native`` runs
    that module as a script, which must not find it imported already)."""
    from supernet import native

    return native.library()


@functools.lru_cache(maxsize=64)
def _native_bounds(bits: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """qn, qp (in ``dtype``, as clamp converts them) and whether each bit-width is float:
    constants of a mix, built once (a step would otherwise make them every call)."""
    quantized = [_bounds(b) if b < FLOAT_BITS else (0, 0) for b in bits]
    return (torch.tensor([qn for qn, _ in quantized], dtype=dtype),
            torch.tensor([qp for _, qp in quantized], dtype=dtype),
            torch.tensor([b >= FLOAT_BITS for b in bits], dtype=torch.uint8))


@functools.lru_cache(maxsize=16)
def _clip_bounds(clip: tuple[float, float], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(clip, dtype=dtype)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its memory is one contiguous run (contiguous or channels_last: the
    first dimension outermost either way, so a weight's output channels are runs too)."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def _laid_out_as(grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``grad`` in the dense ``t``'s strides and dtype (the kernels walk both as one run)."""
    if grad.stride() == t.stride() and grad.dtype == t.dtype:
        return grad
    return torch.empty_like(t).copy_(grad)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A small parameter-like tensor (steps, probabilities) as one contiguous run."""
    return t if t.is_contiguous() else t.contiguous()


def _check_small(x: torch.Tensor, bits: tuple[int, ...], *small: torch.Tensor) -> None:
    """The kernels read steps and probabilities as x's dtype, one per bit-width."""
    for t in small:
        if t.dtype != x.dtype or t.numel() != len(bits):
            raise ValueError(f"native kernels: {len(bits)} steps/probabilities in "
                             f"{x.dtype} expected, got {t.numel()} in {t.dtype}")


def _call_native(name: str, x: torch.Tensor, bits: tuple[int, ...], *args) -> None:
    """The kernel ``name`` for x's dtype on ``args``, as one profiler event under a profiler
    (``hwnas::…``: the op counts and traces see it)."""
    fn = getattr(_native_library(), name + NATIVE_DTYPES[x.dtype])
    if _profiler_enabled():  # the event costs ~20 µs a call, so only under a profiler
        with torch.profiler.record_function(name.replace("hwnas_", "hwnas::")):
            failed = fn(*args)
    else:
        failed = fn(*args)
    if failed:
        raise ValueError(f"bits: {len(bits)} bit-widths in one mix; the native kernels take "
                         f"at most {NATIVE_MAX_BITS}")


def _act_pointers(x: torch.Tensor, steps: torch.Tensor, probs: torch.Tensor,
                  bits: tuple[int, ...], clip: Clip) -> list:
    """The activation kernels' pointer arguments after the length and bit count: the raw steps
    (the kernels take |s| floored at MIN_STEP themselves), probabilities, bounds, clamp."""
    _check_small(x, bits, steps, probs)
    qn, qp, is_float = _native_bounds(bits, x.dtype)
    bounds = None if clip is None else _clip_bounds(clip, x.dtype)  # cached: stays alive
    return [steps.data_ptr(), probs.data_ptr(), qn.data_ptr(), qp.data_ptr(),
            is_float.data_ptr(), None if bounds is None else bounds.data_ptr()]  # null: no clamp


def native_act_forward(x: torch.Tensor, steps: torch.Tensor, probs: torch.Tensor,
                       bits: tuple[int, ...], clip: Clip = None) -> torch.Tensor:
    """`act_forward` in one pass: the same floats, in x's layout (CPU, float32/float64; steps
    and probabilities in x's dtype)."""
    x, steps, probs = _dense(x), _flat(steps), _flat(probs)
    out = torch.empty_like(x)
    _call_native("hwnas_act_forward", x, bits, x.data_ptr(), out.data_ptr(), x.numel(),
                 len(bits), *_act_pointers(x, steps, probs, bits, clip), MIN_STEP,
                 torch.get_num_threads())
    return out


def native_act_backward(grad: torch.Tensor, x: torch.Tensor, steps: torch.Tensor,
                        probs: torch.Tensor, bits: tuple[int, ...], clip: Clip = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`act_backward` in one pass: ∂/∂x bit-identical, the per-bit-width sums in double, the
    step and probability gradients finished in the same call."""
    x, steps, probs = _dense(x), _flat(steps), _flat(probs)
    grad = _laid_out_as(grad, x)
    grad_x = torch.empty_like(x)
    d_steps, d_probs = torch.empty(2, len(bits), dtype=x.dtype).unbind()
    _call_native("hwnas_act_backward", x, bits, grad.data_ptr(), x.data_ptr(),
                 grad_x.data_ptr(), x.numel(), len(bits),
                 *_act_pointers(x, steps, probs, bits, clip), x[0].numel(), MIN_STEP,
                 d_steps.data_ptr(), d_probs.data_ptr(), torch.get_num_threads())
    return grad_x, d_steps, d_probs


def _channels(w: torch.Tensor) -> tuple[int, int]:
    """(output channels, elements per channel) of a dense weight."""
    return w.shape[0], w.numel() // w.shape[0]


def native_weight_forward(w: torch.Tensor, probs: torch.Tensor,
                          bits: tuple[int, ...]) -> torch.Tensor:
    """`weight_forward` in one pass: the same floats, in w's layout."""
    w, probs = _dense(w), _flat(probs)
    _check_small(w, bits, probs)
    out = torch.empty_like(w)
    _, qp, is_float = _native_bounds(bits, w.dtype)
    _call_native("hwnas_weight_forward", w, bits, w.data_ptr(), out.data_ptr(), *_channels(w),
                 len(bits), probs.data_ptr(), qp.data_ptr(), is_float.data_ptr())
    return out


def native_weight_backward(grad: torch.Tensor, w: torch.Tensor, probs: torch.Tensor,
                           bits: tuple[int, ...], need_probs: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`weight_backward` in one pass; ⟨grad, Q_b(w)⟩ summed in double (None, and not
    computed, without ``need_probs``)."""
    w, probs = _dense(w), _flat(probs)
    _check_small(w, bits, probs)
    grad = _laid_out_as(grad, w)
    grad_w = torch.empty_like(w)
    d_probs = torch.empty(len(bits), dtype=w.dtype) if need_probs else None
    _, qp, is_float = _native_bounds(bits, w.dtype)
    _call_native("hwnas_weight_backward", w, bits, grad.data_ptr(), w.data_ptr(),
                 grad_w.data_ptr(), *_channels(w), len(bits), probs.data_ptr(), qp.data_ptr(),
                 is_float.data_ptr(), None if d_probs is None else d_probs.data_ptr())
    return grad_w, d_probs


# -- weights (per-output-channel symmetric, scale from the channel's max magnitude) -------------
def weight_forward(w: torch.Tensor, probs: torch.Tensor, bits: tuple[int, ...]) -> torch.Tensor:
    """Σ_b p_b · Q_b(w); the same values as `supernet.quant.quantize_weight` per bit-width."""
    out = None
    peak = None
    for i, b in enumerate(bits):
        if b >= FLOAT_BITS:
            term = probs[i] * w
        else:
            if peak is None:
                peak = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12)
            scale = peak / _bounds(b)[1]
            term = torch.div(w, scale).round_().mul_(scale).mul_(probs[i])
        out = term if out is None else out.add_(term)
    return out


def weight_backward(grad: torch.Tensor, w: torch.Tensor, probs: torch.Tensor,
                    bits: tuple[int, ...], need_probs: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """∂/∂w = grad·Σ_b p_b (straight-through rounding, the scale a constant of the step);
    ∂/∂p_b = ⟨grad, Q_b(w)⟩ (None, and not computed, without ``need_probs``)."""
    if not need_probs:
        return grad * probs.sum(), None
    peak = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12)
    d_probs = []
    for b in bits:
        if b >= FLOAT_BITS:
            d_probs.append((grad * w).sum())
        else:
            scale = peak / _bounds(b)[1]
            d_probs.append((grad * torch.div(w, scale).round_().mul_(scale)).sum())
    return grad * probs.sum(), torch.stack(d_probs)


# -- the autograd ops -----------------------------------------------------------------------------
KERNELS = ("act_forward", "act_backward", "weight_forward", "weight_backward")


class _Kernels:
    """The kernels in use: eager (native on CPU) by default, `torch.compile`d after
    `use_compiled_kernels`."""

    eager = {name: globals()[name] for name in KERNELS}
    compiled: dict[str, Callable] = {}
    native = {name: globals()["native_" + name] for name in KERNELS}
    active = eager
    on = False
    native_on = True


def use_native_kernels(enabled: bool = True) -> None:
    """Run the quantizers on CPU float32/float64 tensors with the native one-pass kernels (the
    default; eager where they cannot be built) or with the eager ones."""
    _Kernels.native_on = enabled


def quant_kernels() -> str:
    """Which kernels the quantizers run on a CPU float32/float64 tensor: "native", "eager" or
    "compiled" (other devices and dtypes: eager unless compiled)."""
    if _Kernels.on:
        return "compiled"
    return "native" if _Kernels.native_on and _native_library() is not None else "eager"


def _kernels(t: torch.Tensor, bits: tuple[int, ...], *small: torch.Tensor
             ) -> dict[str, Callable]:
    """The kernels for ``t`` (and its steps/probabilities ``small``, which must share its
    dtype): native where they apply, else the active set."""
    if (not _Kernels.on and _Kernels.native_on and t.device.type == "cpu"
            and t.dtype in NATIVE_DTYPES and t.dim() > 0 and t.numel() > 0
            and all(s.dtype == t.dtype and s.device == t.device for s in small)
            and len(bits) <= NATIVE_MAX_BITS and _native_library() is not None):
        return _Kernels.native
    return _Kernels.active


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the fused quantizers' kernels through `torch.compile` (one fused loop each, compiled
    on first use per process, any shape) or not (the default: native activation kernels on
    CPU, eager torch ops elsewhere)."""
    if enabled and not _Kernels.compiled:
        _Kernels.compiled = {name: torch.compile(fn, dynamic=True)
                             for name, fn in _Kernels.eager.items()}
    _Kernels.active = _Kernels.compiled if enabled else _Kernels.eager
    _Kernels.on = enabled


def compiled_kernels() -> bool:
    """Whether the fused quantizers run compiled kernels."""
    return _Kernels.on


@contextlib.contextmanager
def kernels(compiled: bool) -> Iterator[None]:
    """Run the fused quantizers with compiled (or the default) kernels inside the block only."""
    before = _Kernels.on
    use_compiled_kernels(compiled)
    try:
        yield
    finally:
        use_compiled_kernels(before)


class MixedActQuant(torch.autograd.Function):
    """Σ_b p_b·LSQ_b(x): one node, one saved tensor (``x``), all gradients in one backward."""

    @staticmethod
    def forward(ctx, x, steps, probs, bits: tuple[int, ...], clip: Clip = None):
        ctx.save_for_backward(x, steps, probs)
        ctx.bits, ctx.clip = bits, clip
        return _kernels(x, bits, steps, probs)["act_forward"](x, steps, probs, bits, clip)

    @staticmethod
    def backward(ctx, grad):
        x, steps, probs = ctx.saved_tensors
        run = _kernels(x, ctx.bits, steps, probs)["act_backward"]
        d_x, d_steps, d_probs = run(grad, x, steps, probs, ctx.bits, ctx.clip)
        return d_x, d_steps, d_probs, None, None


class MixedWeightQuant(torch.autograd.Function):
    """Σ_b p_b·Q_b(w) with straight-through rounding: ∂/∂w = Σ_b p_b, ∂/∂p_b = ⟨grad, Q_b(w)⟩
    (the scale is a constant of the step, as in `quantize_weight`)."""

    @staticmethod
    def forward(ctx, w, probs, bits: tuple[int, ...]):
        ctx.save_for_backward(w, probs)
        ctx.bits = bits
        # a detached view: compiled kernels keep one build for every shape (parameters' shapes
        # would be specialised)
        run = _kernels(w, bits, probs)["weight_forward"]
        return run(w.detach() if _Kernels.on else w, probs, bits)

    @staticmethod
    def backward(ctx, grad):
        w, probs = ctx.saved_tensors
        w = w.detach() if _Kernels.on else w
        run = _kernels(w, ctx.bits, probs)["weight_backward"]
        d_w, d_probs = run(grad, w, probs, ctx.bits, ctx.needs_input_grad[1])
        return d_w, d_probs, None


def mixed_act_quant(x: torch.Tensor, steps: torch.Tensor, probs: torch.Tensor,
                    bits: tuple[int, ...], clip: Clip = None) -> torch.Tensor:
    """Σ_b probs[b]·LSQ(x, |steps[b]|, bits[b]): ``steps`` are the learned step sizes, one per
    bit-width (the entry of 32 bits is unused), used by magnitude, at least ``MIN_STEP``;
    ``clip`` (lo, hi) clamps x first, in the same pass (a fused ReLU/ReLU6)."""
    probs = probs if probs.dtype == x.dtype else probs.to(x.dtype)
    clip = None if clip is None else (float(clip[0]), float(clip[1]))
    return MixedActQuant.apply(x, steps, probs, tuple(int(b) for b in bits), clip)


def mixed_weight_quant(w: torch.Tensor, probs: torch.Tensor,
                       bits: tuple[int, ...]) -> torch.Tensor:
    """Σ_b probs[b]·quantize_weight(w, bits[b]) as one op."""
    probs = probs if probs.dtype == w.dtype else probs.to(w.dtype)
    return MixedWeightQuant.apply(w, probs, tuple(int(b) for b in bits))
