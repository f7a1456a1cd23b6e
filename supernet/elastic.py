"""Elastic layers: hold the largest weights, run a concrete choice (sliced) or a `Mix` (masked).

Input channels are always read off the input tensor, so a layer never needs to be told the
previous layer's width. Each layer can also return its own static, sliced copy (`static`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from supernet.mix import Choice, Mix, choice_masks, width_of
from supernet.quant import mixed_weight


def kernel_mask(kernel: Mix, size: int, like: torch.Tensor) -> torch.Tensor:
    """Expected ``size``×``size`` mask: P(position lies in the chosen centred k×k window)."""
    def compute() -> torch.Tensor:
        masks = choice_masks("window", tuple(kernel.values), size, like.device, like.dtype)
        return (kernel.probs.to(like.dtype) @ masks).view(size, size)

    return kernel.cached(("window", size, like.dtype), compute)


def centre_crop(w: torch.Tensor, k: int) -> torch.Tensor:
    lo = (w.shape[-1] - k) // 2
    return w[..., lo:lo + k, lo:lo + k]


class ElasticConv2d(nn.Module):
    """Bias-free conv (dense or depthwise) with elastic out-channels, kernel size and weight bits.

    A smaller kernel is the centre crop of the largest (nested weights); a `Mix` of kernels masks
    the outer ring instead, so one convolution runs at the largest size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 depthwise: bool = False):
        super().__init__()
        if depthwise and in_channels != out_channels:
            raise ValueError(f"depthwise conv needs in == out channels, got {in_channels}, "
                             f"{out_channels}")
        self.stride, self.depthwise, self.kernel_size = stride, depthwise, kernel_size
        shape = (out_channels, 1 if depthwise else in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def _weight(self, cin: int, out: Choice, kernel: Choice, bits: Choice,
                mask: torch.Tensor | None = None, in_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        w = mixed_weight(self.weight, bits)  # quantize first: the scale sees the whole tensor
        cout = cin if self.depthwise else width_of(out, self.weight.shape[0])
        if cout < w.shape[0]:  # slice only when smaller: a full slice costs a copy in backward
            w = w[:cout]
        if not self.depthwise and cin < w.shape[1]:
            w = w[:, :cin]
        if mask is not None:  # (out, in) connectivity, e.g. grouped 1x1 convs
            w = w * mask[:w.shape[0], :w.shape[1], None, None].to(w.dtype)
        if in_mask is not None:  # a per-channel scale of the input, folded onto the weight
            shape = (-1, 1, 1, 1) if self.depthwise else (1, -1, 1, 1)
            w = w * in_mask.view(shape)
        if isinstance(kernel, Mix):
            return w * kernel_mask(kernel, self.kernel_size, w)
        return centre_crop(w, int(kernel))

    def forward(self, x: torch.Tensor, out: Choice, kernel: Choice, bits: Choice,
                mask: torch.Tensor | None = None, in_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``in_mask`` (one value per input channel) scales the input: conv(x·m, w) is
        conv(x, w·m), an op on the small weight instead of the activation."""
        cin = x.shape[1]
        w = self._weight(cin, out, kernel, bits, mask, in_mask)
        groups = cin if self.depthwise else 1
        return F.conv2d(x, w, stride=self.stride, padding=w.shape[-1] // 2, groups=groups)

    @torch.no_grad()
    def static(self, cin: int, out: int, kernel: int, bits: int,
               mask: torch.Tensor | None = None) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the sliced, already-quantized (and masked) weight."""
        w = self._weight(cin, out, kernel, bits, mask)
        conv = nn.Conv2d(cin, w.shape[0], int(kernel), self.stride, int(kernel) // 2,
                         groups=cin if self.depthwise else 1, bias=False)
        conv.weight.copy_(w)
        return conv


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the first ``C`` channels of its input, ``C`` read off the input.

    Sliced running statistics are views, so a subnet's training step updates the shared ones.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        momentum = 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            # momentum=None means a cumulative average, as in nn.BatchNorm2d (BN recalibration)
            momentum = (self.momentum if self.momentum is not None
                        else 1.0 / float(self.num_batches_tracked))
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
            self.training, momentum, self.eps,
        )

    @torch.no_grad()
    def static(self, c: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(c, eps=self.eps, momentum=self.momentum)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(getattr(self, name)[:c])
        bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class ElasticLinear(nn.Linear):
    """Linear layer over the first ``C`` input features, ``C`` read off the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if x.shape[1] == self.in_features else self.weight[:, : x.shape[1]]
        return F.linear(x, w, self.bias)

    @torch.no_grad()
    def static(self, cin: int) -> nn.Linear:
        lin = nn.Linear(cin, self.out_features)
        lin.weight.copy_(self.weight[:, :cin])
        lin.bias.copy_(self.bias)
        return lin
