"""Extraction: an `ArchConfig` → a plain static network with sliced weights.

The result holds only ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` / activations and
frozen fake-quantizers (weights are stored already on their bit-width's grid), so it runs,
saves and exports to ONNX like any torch model — and equals the supernet at that config.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from supernet.arch import ArchConfig
from supernet.model import SuperNet


class StaticNet(nn.Module):
    """One member of the family: stem → stages → exit heads, returns logits of every exit."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], heads: dict[int, nn.Module]):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.exit_stages = tuple(sorted(heads))
        self.heads = nn.ModuleDict({str(s): h for s, h in heads.items()})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        logits = []
        for i, stage in enumerate(self.stages, 1):
            x = stage(x)
            if i in self.exit_stages:
                logits.append(self.heads[str(i)](x))
        return logits


@torch.no_grad()
def extract(net: SuperNet, arch: ArchConfig) -> StaticNet:
    """A standalone copy of ``net`` at ``arch`` (same mode, device and dtype as ``net``)."""
    resolved = net.space.resolve(arch)
    last = net.last_stage(resolved)
    stages, heads = [], {}
    for i in range(1, last + 1):
        cin = int(net.in_width(resolved, i))
        stages.append(net.stages[i - 1].static(cin, net.block_choices(resolved, i)))
        if str(i) in net.heads:
            width = int(resolved[f"stage{i}.width"])
            if net.head is not None and i == len(net.stages):  # head conv, then classifier
                heads[i] = nn.Sequential(net.head.static(width),
                                         *net.heads[str(i)].static(net.head.channels))
            else:
                heads[i] = net.heads[str(i)].static(width)
    static = StaticNet(copy.deepcopy(net.stem), stages, heads)
    param = next(net.parameters())
    return static.to(device=param.device, dtype=param.dtype).train(net.training)
