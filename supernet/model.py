"""`SuperNet`: the whole elastic network; `forward(x, arch)` runs any member of the space.

``arch`` is an `ArchConfig` (concrete: weights sliced, smaller tensors) or a mapping from
decision key to a probability vector (relaxed: one full-size network, probability-weighted).
It returns the logits of every exit that runs, shallowest first.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.layers import create_act_layer
from torch import nn

from supernet.arch import ArchConfig
from supernet.blocks import BlockChoice, ElasticStage, ExitHead, group_choice, mid_channels
from supernet.elastic import ElasticConv2d
from supernet.mix import Choice, Mix
from supernet.space import SearchSpace
from supernet.topology import value

RelaxedArch = Mapping[str, torch.Tensor]


class SuperNet(nn.Module):
    """Stem → elastic stages → exit heads; holds the largest weights of every member."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        stem = space.stem
        self.stem = nn.Sequential(
            nn.Conv2d(space.input_channels, stem.channels, stem.kernel, stem.stride,
                      stem.kernel // 2, bias=False),
            nn.BatchNorm2d(stem.channels),
            create_act_layer(space.act),
        )
        stages, in_widths = [], (stem.channels,)
        for i, spec in enumerate(space.stages, 1):
            stages.append(ElasticStage(in_widths, spec, self.stage_blocks(i), space.act,
                                       space.channel_divisor, space.drop_path))
            in_widths = spec.widths
        self.stages = nn.ModuleList(stages)
        last = len(space.stages)
        self.head = None  # optional 1x1 conv before the last exit's classifier
        if space.head_channels:
            self.head = HeadConv(in_widths[-1], space.head_channels, space.act)
        self.heads = nn.ModuleDict({
            str(s): ExitHead(space.head_channels if s == last and self.head is not None
                             else space.stages[s - 1].widths[-1], space.num_classes)
            for s in space.exit_stages
        })

    def stage_blocks(self, stage: int):
        return [b for b in self.space.blocks if b.stage == stage]

    def block_choices(self, resolved: Mapping[str, Choice], stage: int) -> list[BlockChoice]:
        """The setting of every block of ``stage`` that runs (all of them under a `Mix` of
        depths), read through the space's `BlockKeys`."""
        depth = resolved[f"stage{stage}.depth"]
        blocks = self.stage_blocks(stage)
        n = len(blocks) if isinstance(depth, Mix) else int(depth)
        out = []
        for b in blocks[:n]:
            mid = mid_channels(value(resolved, b.in_width), resolved[b.expand],
                               self.space.channel_divisor)
            groups = group_choice(b, resolved[b.dense], resolved[b.expand]) if b.dense else 1
            out.append(BlockChoice(mid, resolved[b.width], resolved[b.kernel], resolved[b.wbits],
                                   resolved[b.abits], value(resolved, b.run, 1), groups))
        return out

    def in_width(self, resolved: Mapping[str, Choice], stage: int) -> Choice:
        src = self.space.stage_in_width(stage)
        return resolved[src] if isinstance(src, str) else src

    def last_stage(self, resolved: Mapping[str, Choice]) -> int:
        """The deepest stage that runs: the chosen exit (every stage under a `Mix` of exits)."""
        exit_ = resolved["exit"]
        return len(self.stages) if isinstance(exit_, Mix) else int(exit_)

    def forward(self, x: torch.Tensor, arch: ArchConfig | RelaxedArch) -> list[torch.Tensor]:
        resolved = self.space.resolve(arch)
        x = self.stem(x)
        logits = []
        for i in range(1, self.last_stage(resolved) + 1):
            x = self.stages[i - 1](x, self.block_choices(resolved, i),
                                   resolved[f"stage{i}.depth"])
            if self.head is not None and i == len(self.stages):
                x = self.head(x)
            if str(i) in self.heads:
                logits.append(self.heads[str(i)](x))
        return logits


class HeadConv(nn.Module):
    """1x1 conv → BN → activation after the last stage (float weights, no quantizer), as
    MobileNet-style networks put before their classifier; its input width is read off x."""

    def __init__(self, in_max: int, channels: int, act: str):
        super().__init__()
        self.conv = ElasticConv2d(in_max, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.act_name, self.act = act, create_act_layer(act)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x, self.channels, 1, 32)))

    @torch.no_grad()
    def static(self, cin: int) -> nn.Sequential:
        bn = nn.BatchNorm2d(self.channels, eps=self.bn.eps, momentum=self.bn.momentum)
        bn.load_state_dict(self.bn.state_dict())
        return nn.Sequential(self.conv.static(cin, self.channels, 1, 32), bn,
                             create_act_layer(self.act_name))
