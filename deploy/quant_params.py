"""The quantization a member was trained with, read off the supernet and the extracted member.

A weight's per-output-channel step comes from the whole supernet tensor (`supernet.quant`), so
it cannot be recomputed from the member's slice; `trained_weight_quant` reads it where the search
computed it and checks that the member's weights lie on that grid. Batch-norm folding lives here
too: it is exact algebra on float tensors, shared by the float and the integer lowering.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from supernet.arch import ArchConfig
from supernet.blocks import StaticSkipConv
from supernet.extract import StaticNet
from supernet.model import SuperNet
from supernet.quant import FLOAT_BITS, weight_scale

BLOCK_CONVS = ("conv_pw", "conv_dw", "conv_pwl")
SKIP_CONV = "conv"  # a skip's 1x1 conv (`StaticSkipConv`), named like the block convs
HEAD_CONV = "head"  # the layer name of the optional head conv, as the cost tables name it


class LoweringError(ValueError):
    """A member that cannot be lowered as asked; the message names the layer and the fix."""


@dataclass(frozen=True)
class WeightQuant:
    """A conv's integer weights: ``bits`` and the trained per-output-channel step (float32)."""

    bits: int
    scale: torch.Tensor  # [out_channels]

    def integers(self, weight: torch.Tensor, name: str = "weight") -> torch.Tensor:
        """``weight / scale`` as integers in ±(2**(bits-1) - 1); a weight off that grid is an
        error (the scale is not the one it was trained with)."""
        s = self.scale.reshape(-1, *([1] * (weight.dim() - 1)))
        q = torch.round(weight / s)
        qmax = 2 ** (self.bits - 1) - 1
        if q.abs().max() > qmax or not torch.equal(q * s, weight):
            off = float((q * s - weight).abs().max())
            raise LoweringError(f"{name}: weights are not on the {self.bits}-bit grid of the "
                                f"stored scales (off by {off:.3g}); lower the member with the "
                                "scales its family was exported with")
        return q.to(torch.int8)


def block_conv_names(static: StaticNet) -> list[tuple[str, int, int]]:
    """``(module name, stage number, block index)`` of every block conv of ``static``: a
    block's three, a skip's 1x1 conv (`StaticSkipConv`, ``stages.i.j.conv``); an identity skip
    (an ``nn.Identity``) has none."""
    return [(f"stages.{i - 1}.{j}.{conv}", i, j)
            for i, stage in enumerate(static.stages, 1)
            for j, block in enumerate(stage)
            for conv in block_convs(block)]


def block_convs(block: nn.Module) -> tuple[str, ...]:
    """The conv attributes of one extracted block."""
    if isinstance(block, nn.Identity):
        return ()
    return (SKIP_CONV,) if isinstance(block, StaticSkipConv) else BLOCK_CONVS


def head_conv(head: nn.Sequential) -> nn.Sequential | None:
    """The ``(conv, bn, act)`` an exit head starts with when the space has a head conv (the
    last exit's: head conv → pool → flatten → fc), else None (pool → flatten → fc)."""
    return head[0] if isinstance(head[0], nn.Sequential) else None


@torch.no_grad()
def trained_weight_quant(net: SuperNet, static: StaticNet,
                         config: ArchConfig) -> dict[str, WeightQuant]:
    """The weight quantization of every quantized conv of ``static`` (extracted from ``net`` at
    ``config``), keyed by module name: the supernet's per-channel steps, sliced (a skip's conv
    reads the supernet block's ``skip_conv``). Grouped convs keep the dense conv's output
    channels, so their steps slice the same way."""
    resolved = net.space.resolve(net.space.validate(config))
    out = {}
    for name, i, j in block_conv_names(static):
        bits = int(resolved[f"stage{i}.wbits"])
        if bits >= FLOAT_BITS:
            continue
        conv = name.rsplit(".", 1)[1]
        block = net.stages[i - 1].blocks[j]
        full = (block.skip_conv if conv == SKIP_CONV else getattr(block, conv)).weight
        cout = static.get_submodule(name).out_channels
        wq = WeightQuant(bits, weight_scale(full, bits).flatten()[:cout].float().cpu().clone())
        wq.integers(static.get_submodule(name).weight.detach().cpu(), name)  # on the grid?
        out[name] = wq
    return out


@torch.no_grad()
def fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free conv followed by ``bn`` (eval mode) as one conv: ``(weight, bias)`` with
    ``weight · γ/σ`` per output channel and ``β − γ·μ/σ``, σ = sqrt(running_var + eps)."""
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    return w, bn.bias - bn.running_mean * factor
