"""Elastic inverted-residual block (MBConv), elastic stage (depth) and exit head.

Each takes its architecture as a `forward` argument — concrete values or `Mix`es — and can
return a static copy of itself at a concrete setting (`static`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from timm.layers import DropPath, create_act_layer, make_divisible
from torch import nn

from supernet.elastic import ElasticBatchNorm2d, ElasticConv2d, ElasticLinear
from supernet.groups import (
    ChannelShuffle,
    expand_mask,
    grouped_weight,
    project_mask,
    unshuffle_inputs,
)
from supernet.mix import Choice, Mix, apply_width, combine, mix_outputs, width_mask
from supernet.quant import ActQuantizer
from supernet.topology import BlockKeys, block_groups


def mid_channels(in_width: Choice, expand: Choice, divisor: int) -> Choice:
    """Expanded (hidden) channels of a block: ``make_divisible(in × expand)``, as in timm.

    For mixes, the joint `Mix` is computed once per pass and shared by the blocks that use it.
    """
    def joint() -> Choice:
        return combine(in_width, expand, lambda w, e: make_divisible(w * e, divisor))

    owner, other = (in_width, expand) if isinstance(in_width, Mix) else (expand, in_width)
    if not isinstance(owner, Mix):
        return joint()
    key = ("mid", owner is in_width, id(other) if isinstance(other, Mix) else other, divisor)
    return owner.cached(key, joint)


def group_choice(keys: BlockKeys, dense: Choice, expand: Choice) -> Choice:
    """A block's 1x1 group count: concrete, or a `Mix` over ``(groups, 1)`` whose first
    probability is P(dense = 0) · P(expand = the grouped expansion)."""
    if not isinstance(dense, Mix) and not isinstance(expand, Mix):
        return block_groups(keys, dense, expand)

    def p(c: Choice, v) -> torch.Tensor | float:  # v is always one of a mix's values
        return c.probs[c.values.index(v)] if isinstance(c, Mix) else float(c == v)

    grouped = p(dense, 0) * p(expand, keys.grouped_expand)  # a tensor: one side is a Mix
    return Mix(torch.stack([grouped, 1 - grouped]), (keys.groups, 1))


def act_clip(act: nn.Module) -> tuple[float, float] | None:
    """The (lo, hi) clamp an activation is, for the quantizer to fuse; None for others."""
    if isinstance(act, nn.ReLU6):
        return 0.0, 6.0
    if type(act) is nn.ReLU:
        return 0.0, math.inf
    return None


@dataclass(frozen=True)
class BlockChoice:
    """What one block runs: hidden and output widths, kernel, weight and activation bits,
    whether it runs at all (``run`` 0: skipped, 1: the block; a `Mix` weighs both) and the group
    count of its 1x1 convs (a `Mix` over ``(groups, 1)`` masks between grouped and dense)."""

    mid: Choice
    out: Choice
    kernel: Choice
    wbits: Choice
    abits: Choice
    run: Choice = 1
    groups: Choice = 1


class ElasticInvertedResidual(nn.Module):
    """quant → 1×1 expand → BN → act → quant → k×k depthwise → BN → act → quant → 1×1 project → BN.

    Every conv's weight is fake-quantized to ``wbits``; every conv input to ``abits``. The
    shortcut exists only where the space guarantees equal shapes (blocks after a stage's first;
    a first block with stride 1 and one fixed width equal to its input's), so it never depends
    on the widths. ``run`` 0 skips the block: the identity, or with ``skip_conv`` (where the
    identity does not fit) quant → 1×1 conv with the stride → BN, with its own weights.
    ``grouped_mid`` > 0: the hidden width at which both 1x1 convs may run in ``groups`` groups
    (`supernet.groups`).
    """

    def __init__(self, in_max: int, mid_max: int, out_max: int, kernel_max: int, stride: int,
                 act: str, weight_bits: tuple[int, ...], act_bits: tuple[int, ...],
                 residual: bool, drop_path: float = 0.0, *, skip_conv: bool = False,
                 groups: int = 1, grouped_mid: int = 0):
        super().__init__()
        self.groups = groups
        if groups > 1:  # constants, rebuilt with the module (not in checkpoints)
            self.register_buffer("pw_mask", expand_mask(mid_max, in_max, grouped_mid, groups),
                                 persistent=False)
            self.register_buffer("pwl_mask", project_mask(out_max, mid_max, grouped_mid, groups),
                                 persistent=False)
        self.skip_conv = ElasticConv2d(in_max, out_max, 1, stride) if skip_conv else None
        self.skip_bn = ElasticBatchNorm2d(out_max) if skip_conv else None
        self.residual = residual
        self.quant_in, self.quant_mid, self.quant_dw = (ActQuantizer(act_bits) for _ in range(3))
        self.conv_pw = ElasticConv2d(in_max, mid_max, 1)
        self.bn1 = ElasticBatchNorm2d(mid_max)
        self.conv_dw = ElasticConv2d(mid_max, mid_max, kernel_max, stride, depthwise=True)
        self.bn2 = ElasticBatchNorm2d(mid_max)
        self.conv_pwl = ElasticConv2d(mid_max, out_max, 1)
        self.bn3 = ElasticBatchNorm2d(out_max)
        nn.init.zeros_(self.bn3.weight)  # residual blocks start as identity
        if not residual:
            nn.init.ones_(self.bn3.weight)
        self.act_name = act
        self.act = create_act_layer(act)
        self.clip = act_clip(self.act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, c: BlockChoice) -> torch.Tensor:
        if isinstance(c.run, Mix):  # P(skip) · skip(x) + P(run) · block(x)
            return mix_outputs(c.run, [self._run(x, c) if v else self._skip(x, c)
                                       for v in c.run.values])
        return self._run(x, c) if int(c.run) else self._skip(x, c)

    def _act_quant(self, x: torch.Tensor, quant: ActQuantizer, bits: Choice) -> torch.Tensor:
        """act → quant; the quantizer runs a ReLU/ReLU6 in its own pass (one pass over the
        activation less, each way)."""
        if self.clip is not None:
            return quant(x, bits, clip=self.clip)
        return quant(self.act(x), bits)

    def _skip(self, x: torch.Tensor, c: BlockChoice) -> torch.Tensor:
        if self.skip_conv is None:
            return x
        x = self.skip_conv(self.quant_in(x, c.abits), c.out, 1, c.wbits)
        return apply_width(self.skip_bn(x), c.out)

    def _masks(self, groups: Choice) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The 1x1 convs' weight masks: grouped (concrete), expected (a `Mix`), or none."""
        if self.groups == 1 or groups == 1:
            return None, None
        if not isinstance(groups, Mix):
            return self.pw_mask, self.pwl_mask
        p = groups.probs[0].to(self.pw_mask.dtype)  # P(grouped)
        return 1 - p * (1 - self.pw_mask), 1 - p * (1 - self.pwl_mask)

    def _run(self, x: torch.Tensor, c: BlockChoice) -> torch.Tensor:
        shortcut = x
        pw_mask, pwl_mask = self._masks(c.groups)
        x = self.quant_in(x, c.abits)
        x = self.bn1(self.conv_pw(x, c.mid, 1, c.wbits, pw_mask))
        # A mixed hidden width masks the quantized activation, folded onto the next conv's
        # weight: E over widths of Q(mask_w·x) is mask·Q(x) exactly (0/1 masks, Q(0) = 0),
        # and one op on the weight replaces two on the activation (forward and backward).
        mid_mask = width_mask(c.mid, x.shape[1])
        x = self._act_quant(x, self.quant_mid, c.abits)
        x = self.bn2(self.conv_dw(x, c.mid, c.kernel, c.wbits, in_mask=mid_mask))
        x = self._act_quant(x, self.quant_dw, c.abits)
        x = self.conv_pwl(x, c.out, 1, c.wbits, pwl_mask, in_mask=mid_mask)
        x = apply_width(self.bn3(x), c.out)
        return shortcut + self.drop_path(x) if self.residual else x

    def static(self, cin: int, c: BlockChoice) -> nn.Module:
        out, wb, ab = int(c.out), int(c.wbits), int(c.abits)
        if not int(c.run):
            if self.skip_conv is None:
                return nn.Identity()
            return StaticSkipConv(quant_in=self.quant_in.static(ab),
                                  conv=self.skip_conv.static(cin, out, 1, wb),
                                  bn=self.skip_bn.static(out))
        mid, k, g = int(c.mid), int(c.kernel), int(c.groups)
        pw_mask, pwl_mask = self._masks(g)
        conv_pw = self.conv_pw.static(cin, mid, 1, wb, pw_mask)
        conv_pwl = self.conv_pwl.static(mid, out, 1, wb, pwl_mask)
        shuffle = nn.Identity()
        if g > 1:  # real grouped convs; the projection reads the shuffled hidden channels
            conv_pw = _grouped(conv_pw, conv_pw.weight, g)
            conv_pwl = _grouped(conv_pwl, unshuffle_inputs(conv_pwl.weight, g), g)
            shuffle = ChannelShuffle(g)
        return StaticInvertedResidual(
            quant_in=self.quant_in.static(ab), conv_pw=conv_pw, bn1=self.bn1.static(mid),
            quant_mid=self.quant_mid.static(ab),
            conv_dw=self.conv_dw.static(mid, mid, k, wb), bn2=self.bn2.static(mid),
            quant_dw=self.quant_dw.static(ab), shuffle=shuffle,
            conv_pwl=conv_pwl, bn3=self.bn3.static(out),
            act=create_act_layer(self.act_name), residual=self.residual,
        )


@torch.no_grad()
def _grouped(conv: nn.Conv2d, dense: torch.Tensor, groups: int) -> nn.Conv2d:
    """``nn.Conv2d(groups=groups)`` holding the diagonal blocks of the masked ``dense`` weight."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, groups=groups, bias=False)
    out.weight.copy_(grouped_weight(dense, groups))
    return out


class StaticSkipConv(nn.Module):
    """An extracted skip where the identity does not fit: quant → 1×1 conv → BN."""

    def __init__(self, *, quant_in, conv, bn):
        super().__init__()
        self.quant_in, self.conv, self.bn = quant_in, conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.quant_in(x)))


class StaticInvertedResidual(nn.Module):
    """The extracted block: plain convs with baked quantized weights and frozen quantizers."""

    def __init__(self, *, quant_in, conv_pw, bn1, quant_mid, conv_dw, bn2, quant_dw, conv_pwl,
                 bn3, act, residual: bool, shuffle: nn.Module | None = None):
        super().__init__()
        self.quant_in, self.conv_pw, self.bn1 = quant_in, conv_pw, bn1
        self.quant_mid, self.conv_dw, self.bn2 = quant_mid, conv_dw, bn2
        self.quant_dw, self.conv_pwl, self.bn3 = quant_dw, conv_pwl, bn3
        self.shuffle = shuffle if shuffle is not None else nn.Identity()
        self.act, self.residual = act, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act(self.bn1(self.conv_pw(self.quant_in(x))))
        x = self.act(self.bn2(self.conv_dw(self.quant_mid(x))))
        x = self.bn3(self.conv_pwl(self.shuffle(self.quant_dw(x))))
        return shortcut + x if self.residual else x


class ElasticStage(nn.Module):
    """A stack of blocks; depth picks a prefix. Each block's settings arrive as a `BlockChoice`
    (the model reads them from the space's `BlockKeys`, per stage or per block).

    A `Mix` of depths runs every block and returns the probability-weighted sum of the outputs
    at each candidate depth.
    """

    def __init__(self, in_widths: tuple[int, ...], spec, blocks: Sequence[BlockKeys], act: str,
                 divisor: int, drop_path: float = 0.0):
        super().__init__()
        self.divisor = divisor
        out_max = spec.widths[-1]
        modules = []
        for j, keys in enumerate(blocks):
            ins = in_widths if j == 0 else spec.widths
            mid_max = max(make_divisible(w * e, divisor) for w in ins for e in spec.expand_ratios)
            grouped_mid = (make_divisible(ins[0] * keys.grouped_expand, divisor)
                           if keys.dense else 0)
            modules.append(ElasticInvertedResidual(
                max(ins), mid_max, out_max, spec.kernel_sizes[-1], keys.stride,
                act, spec.weight_bits, spec.act_bits, residual=keys.residual,
                drop_path=drop_path, skip_conv=keys.skip_conv, groups=keys.groups,
                grouped_mid=grouped_mid,
            ))
        self.blocks = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, choices: Sequence[BlockChoice], depth: Choice
                ) -> torch.Tensor:
        outputs = []
        for block, bc in zip(self.blocks, choices, strict=False):
            x = block(x, bc)
            outputs.append(x)
        if isinstance(depth, Mix):
            return mix_outputs(depth, [outputs[int(d) - 1] for d in depth.values])
        return x

    def static(self, in_width: int, choices: Sequence[BlockChoice]) -> nn.Sequential:
        blocks, cin = [], in_width
        for block, bc in zip(self.blocks, choices, strict=False):
            blocks.append(block.static(cin, bc))
            cin = int(bc.out)
        return nn.Sequential(*blocks)


class ExitHead(nn.Module):
    """Global average pool → linear classifier over the stage's active channels."""

    def __init__(self, in_max: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = ElasticLinear(in_max, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))

    def static(self, cin: int) -> nn.Sequential:
        layers = {"pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten(1), "fc": self.fc.static(cin)}
        return nn.Sequential(OrderedDict(layers))
