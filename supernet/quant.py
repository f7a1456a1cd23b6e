"""Fake quantization with straight-through gradients.

Weights: per-output-channel symmetric, scale from the channel's max magnitude (over the whole
stored tensor, so a sliced subnet keeps the supernet's grid). Activations: signed, one learned
step size per bit-width (LSQ, Esser et al. 2020). 32 bits means float: no quantizer at all.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from supernet.fused import FLOAT_BITS, MIN_STEP, Clip, mixed_act_quant, mixed_weight_quant
from supernet.mix import Choice, Mix


class _RoundSTE(torch.autograd.Function):
    """Round in the forward pass (exactly onto the integer grid), identity in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.round()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return _RoundSTE.apply(x)


def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel step of ``bits``-bit symmetric weights, shaped to broadcast over ``w``:
    the channel's max magnitude over the whole tensor ``w`` (the supernet's) / ``2**(bits-1)-1``."""
    dims = tuple(range(1, w.dim()))
    return w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / (2 ** (bits - 1) - 1)


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization to ``bits`` bits (32 → unchanged)."""
    if bits >= FLOAT_BITS:
        return w
    scale = weight_scale(w, bits)
    return round_ste(w / scale) * scale  # |w / scale| <= qmax by construction: no clipping


def mixed_weight(w: torch.Tensor, bits: Choice) -> torch.Tensor:
    """The weight at a concrete bit-width, or the probability-weighted sum over bit-widths
    (one fused op; `mixed_weight_reference` is the same sum written out). A concrete
    bit-width runs as a mix of one: `quantize_weight`'s floats, its straight-through gradient
    (g, where the unfused chain rounds (g·s)/s), one op each way."""
    if not isinstance(bits, Mix):
        b = int(bits)
        return w if b >= FLOAT_BITS else mixed_weight_quant(w, w.new_ones(1), (b,))
    return mixed_weight_quant(w, bits.probs, bits.values)


def mixed_weight_reference(w: torch.Tensor, bits: Mix) -> torch.Tensor:
    """Σ_b p_b·quantize_weight(w, b), one quantizer per bit-width: the reference."""
    return sum(p * quantize_weight(w, int(b)) for p, b in zip(bits.probs, bits.values, strict=True))


class _LSQ(torch.autograd.Function):
    """Fused LSQ fake quantization: one saved tensor and a handful of ops instead of a chain of
    straight-through tricks (activation quantizers dominate the relaxed network's run time)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, qn: int, qp: int, g: float):
        scaled = x / step
        ctx.save_for_backward(scaled, step)
        ctx.bounds = (qn, qp, g)
        return torch.clamp(torch.round(scaled), -qn, qp) * step

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scaled, step = ctx.saved_tensors
        qn, qp, g = ctx.bounds
        inside = (scaled >= -qn) & (scaled <= qp)
        grad_x = grad * inside  # straight-through inside the range, zero where clipped
        # d(q·s)/ds = round(x/s) − x/s inside the range, the clipping bound outside (LSQ)
        d_step = torch.clamp(torch.round(scaled), -qn, qp) - scaled * inside
        grad_step = (grad * d_step).sum().reshape(step.shape) * g
        return grad_x, grad_step, None, None, None


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed LSQ fake quantization of an activation with a learned ``step`` (32 → unchanged).

    The step's gradient is scaled by ``1/sqrt(numel · qp)`` as LSQ prescribes.
    """
    if bits >= FLOAT_BITS:
        return x
    qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    g = 1.0 / math.sqrt(max(x[0].numel(), 1) * qp)
    return _LSQ.apply(x, step.abs().clamp_min(MIN_STEP), qn, qp, g)


def initial_step(bits: int) -> float:
    """A step that spans about ±4 (a batch-normalised activation's range) with ``bits`` bits."""
    return 4.0 / 2 ** (bits - 1)


class ActQuantizer(nn.Module):
    """One learned step size per candidate activation bit-width; runs a bit-width or a `Mix`."""

    def __init__(self, bit_choices: tuple[int, ...]):
        super().__init__()
        self.bit_choices = tuple(int(b) for b in bit_choices)
        self.step = nn.Parameter(torch.tensor([initial_step(b) for b in self.bit_choices]))

    def forward(self, x: torch.Tensor, bits: Choice, clip: Clip = None) -> torch.Tensor:
        """Quantize ``x``, clamped first to ``clip`` (lo, hi) if given: a ReLU or ReLU6 run
        inside the quantizer's own pass. One bit-width runs as a mix of one (probability 1: the
        same floats as `lsq_quantize`, in the fused op's single pass each way)."""
        if not isinstance(bits, Mix):
            b = int(bits)
            if b >= FLOAT_BITS:
                return x if clip is None else F.hardtanh(x, *clip)
            i = self.bit_choices.index(b)
            return mixed_act_quant(x, self.step[i:i + 1], x.new_ones(1), (b,), clip)
        steps = self.step
        if tuple(bits.values) != self.bit_choices:
            steps = steps[[self.bit_choices.index(int(b)) for b in bits.values]]
        return mixed_act_quant(x, steps, bits.probs, bits.values, clip)

    def reference(self, x: torch.Tensor, bits: Mix) -> torch.Tensor:
        """Σ_b p_b·LSQ_b(x), one quantizer per bit-width: what `forward` fuses."""
        return sum(p * self._at(x, int(b)) for p, b in zip(bits.probs, bits.values, strict=True))

    def _at(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        return lsq_quantize(x, self.step[self.bit_choices.index(bits)], bits)

    def static(self, bits: int) -> nn.Module:
        """A fixed quantizer for an extracted network (or identity at 32 bits)."""
        if bits >= FLOAT_BITS:
            return nn.Identity()
        step = self.step[self.bit_choices.index(bits)].detach().abs().clamp_min(MIN_STEP)
        return FakeQuantAct(float(step), bits)


class FakeQuantAct(nn.Module):
    """A frozen signed activation quantizer: what a deployed ``bits``-bit activation sees."""

    def __init__(self, step: float, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("step", torch.tensor(step))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qn, qp = 2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1
        return torch.clamp(torch.round(x / self.step), -qn, qp) * self.step

    def extra_repr(self) -> str:
        return f"bits={self.bits}, step={float(self.step):.4g}"
