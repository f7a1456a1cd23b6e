"""Fake quantization with straight-through gradients.

Weights: per-output-channel symmetric, scale from the channel's max magnitude (over the whole
stored tensor, so a sliced subnet keeps the supernet's grid). Activations: signed, one learned
step size per bit-width (LSQ, Esser et al. 2020). 32 bits means float: no quantizer at all.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from supernet.mix import Choice, Mix

FLOAT_BITS = 32


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return x + (x.round() - x).detach()


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization to ``bits`` bits (32 → unchanged)."""
    if bits >= FLOAT_BITS:
        return w
    qmax = 2 ** (bits - 1) - 1
    dims = tuple(range(1, w.dim()))
    scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / qmax
    return round_ste(w / scale) * scale  # |w / scale| <= qmax by construction: no clipping


def mixed_weight(w: torch.Tensor, bits: Choice) -> torch.Tensor:
    """The weight at a concrete bit-width, or the probability-weighted sum over bit-widths."""
    if not isinstance(bits, Mix):
        return quantize_weight(w, int(bits))
    return sum(p * quantize_weight(w, int(b)) for p, b in zip(bits.probs, bits.values, strict=True))


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Forward exactly ``x``, backward gradient times ``scale`` (LSQ's step-size scaling)."""
    scaled = x * scale
    return x.detach() + (scaled - scaled.detach())


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed LSQ fake quantization of an activation with a learned ``step`` (32 → unchanged)."""
    if bits >= FLOAT_BITS:
        return x
    qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    g = 1.0 / math.sqrt(max(x[0].numel(), 1) * qp)
    s = _grad_scale(step.abs().clamp_min(1e-8), g)
    return round_ste((x / s).clamp(-qn, qp)) * s


def initial_step(bits: int) -> float:
    """A step that spans about ±4 (a batch-normalised activation's range) with ``bits`` bits."""
    return 4.0 / 2 ** (bits - 1)


class ActQuantizer(nn.Module):
    """One learned step size per candidate activation bit-width; runs a bit-width or a `Mix`."""

    def __init__(self, bit_choices: tuple[int, ...]):
        super().__init__()
        self.bit_choices = tuple(int(b) for b in bit_choices)
        self.step = nn.Parameter(torch.tensor([initial_step(b) for b in self.bit_choices]))

    def forward(self, x: torch.Tensor, bits: Choice) -> torch.Tensor:
        if not isinstance(bits, Mix):
            return self._at(x, int(bits))
        return sum(p * self._at(x, int(b)) for p, b in zip(bits.probs, bits.values, strict=True))

    def _at(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        return lsq_quantize(x, self.step[self.bit_choices.index(bits)], bits)

    def static(self, bits: int) -> nn.Module:
        """A fixed quantizer for an extracted network (or identity at 32 bits)."""
        if bits >= FLOAT_BITS:
            return nn.Identity()
        step = self.step[self.bit_choices.index(bits)].detach().abs().clamp_min(1e-8)
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
