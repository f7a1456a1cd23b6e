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
from supernet.blocks import ElasticStage, ExitHead, StageChoice
from supernet.mix import Choice, Mix
from supernet.space import SearchSpace, stage_decision_keys

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
        for spec in space.stages:
            stages.append(ElasticStage(in_widths, spec, space.act, space.channel_divisor,
                                       space.drop_path))
            in_widths = spec.widths
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleDict({
            str(s): ExitHead(space.stages[s - 1].widths[-1], space.num_classes)
            for s in space.exit_stages
        })

    def stage_choice(self, resolved: Mapping[str, Choice], stage: int) -> StageChoice:
        return StageChoice(**{kind: resolved[key]
                              for kind, key in stage_decision_keys(stage).items()})

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
            x = self.stages[i - 1](x, self.in_width(resolved, i), self.stage_choice(resolved, i))
            if str(i) in self.heads:
                logits.append(self.heads[str(i)](x))
        return logits
