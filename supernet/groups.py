"""Grouped 1x1 convolutions with a channel shuffle, as a mask on a dense conv's weights.

FBNet's grouped candidates run a block's two 1x1 convs in ``g`` groups with a channel shuffle
between them. A grouped conv is a dense conv whose weights outside the ``g`` diagonal blocks are
zero, so the supernet keeps one dense weight and masks it (the grouped member uses a subset of
the dense member's weights). The shuffle is folded into the second conv's mask: an extracted
member runs real grouped convs and a `ChannelShuffle` before the projection conv (the
depthwise conv, batch norm and activation between them are per channel, so where the shuffle
sits does not change the function).
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelShuffle(nn.ChannelShuffle):
    """``nn.ChannelShuffle`` written as reshape → transpose → reshape, which ONNX export and
    compilers take (``aten::channel_shuffle`` has no ONNX export)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        return x.reshape(n, self.groups, c // self.groups, *x.shape[2:]).transpose(1, 2) \
            .reshape(x.shape)


def shuffle_perm(channels: int, groups: int) -> torch.Tensor:
    """``perm[o]``: where ``nn.ChannelShuffle(groups)`` moves channel ``o``."""
    o = torch.arange(channels)
    per = channels // groups
    return (o % per) * groups + o // per


def block_diagonal(out_channels: int, in_channels: int, groups: int) -> torch.Tensor:
    """0/1 ``(out, in)`` mask of a grouped conv: output group ``G`` reads input group ``G``."""
    o = torch.arange(out_channels) // (out_channels // groups)
    i = torch.arange(in_channels) // (in_channels // groups)
    return (o[:, None] == i[None, :]).float()


def expand_mask(out_max: int, in_channels: int, mid: int, groups: int) -> torch.Tensor:
    """The expand conv's ``(out_max, in)`` mask: grouped over the first ``mid`` outputs (the
    hidden width at the grouped expansion), ones beyond (channels only larger expansions use)."""
    mask = torch.ones(out_max, in_channels)
    mask[:mid] = block_diagonal(mid, in_channels, groups)
    return mask


def project_mask(out_channels: int, in_max: int, mid: int, groups: int) -> torch.Tensor:
    """The projection conv's ``(out, in_max)`` mask over unshuffled hidden channels: the grouped
    conv that follows a channel shuffle of the first ``mid``; ones beyond ``mid``."""
    mask = torch.ones(out_channels, in_max)
    mask[:, :mid] = block_diagonal(out_channels, mid, groups)[:, shuffle_perm(mid, groups)]
    return mask


def grouped_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """The ``(out, in / groups, k, k)`` weight of an ``nn.Conv2d(groups=groups)`` from the dense
    ``(out, in, k, k)`` weight whose off-diagonal blocks the mask zeroes."""
    out, cin = w.shape[:2]
    blocks = w.reshape(groups, out // groups, groups, cin // groups, *w.shape[2:])
    return torch.cat([blocks[g, :, g] for g in range(groups)])


def unshuffle_inputs(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``w`` with its input channels reordered to read a shuffled tensor: ``out[:, perm[o]] =
    w[:, o]``, so a conv on the shuffled input equals ``w`` on the unshuffled one."""
    out = torch.empty_like(w)
    out[:, shuffle_perm(w.shape[1], groups)] = w
    return out
