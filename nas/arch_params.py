"""Architecture parameters α: one logit vector per search-space decision.

The relaxations are the field's usual ones — ``softmax`` (DARTS), ``gumbel`` soft samples and
``gumbel_hard`` straight-through one-hot samples (FBNet, GDAS), and ``binary`` gates (a one-hot
sample from softmax(α) with a straight-through gradient, ProxylessNAS).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from supernet import ArchConfig, SearchSpace

Relaxation = Literal["softmax", "gumbel", "gumbel_hard", "binary"]
RELAXATIONS = ("softmax", "gumbel", "gumbel_hard", "binary")


def _param_name(key: str) -> str:
    return key.replace(".", "__")  # ParameterDict names may not contain dots


class ArchParameters(nn.Module):
    """α per decision, initialised uniform (zeros) so the search starts without a bias."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        self.alpha = nn.ParameterDict({
            _param_name(d.key): nn.Parameter(torch.zeros(len(d.choices)))
            for d in space.decisions
        })

    def logits(self, key: str) -> torch.Tensor:
        return self.alpha[_param_name(key)]

    def probs(self, tau: float = 1.0) -> dict[str, torch.Tensor]:
        """softmax(α/τ) per decision — the distribution the search currently believes in;
        τ < 1 sharpens it toward the argmax member."""
        return {d.key: F.softmax(self.logits(d.key) / tau, -1) for d in self.space.decisions}

    def distribution(self, relaxation: Relaxation = "softmax", tau: float = 1.0,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Probabilities per decision under ``relaxation`` at temperature ``tau``.

        Pass a ``generator`` seeded identically on every rank so all ranks draw the same sample.
        """
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation: must be one of {RELAXATIONS}, got {relaxation!r}")
        if tau <= 0:
            raise ValueError(f"tau: the temperature must be positive, got {tau}")
        if relaxation == "softmax":
            return self.probs(tau)
        out = {}
        for d in self.space.decisions:
            a = self.logits(d.key)
            # the uniforms come from the host generator; the choice stays on the device
            if relaxation == "binary":
                soft = F.softmax(a, -1)
                u = torch.rand((), generator=generator).to(a)
                idx = (soft.detach().cumsum(-1) < u).sum().clamp_max(len(d.choices) - 1)
            else:
                u = torch.rand(a.shape, generator=generator).clamp(1e-9, 1 - 1e-9).to(a)
                soft = F.softmax((a - torch.log(-torch.log(u))) / tau, -1)
                if relaxation == "gumbel":
                    out[d.key] = soft
                    continue
                idx = soft.detach().argmax()
            hard = _one_hot(idx, soft)
            out[d.key] = hard - soft.detach() + soft  # straight-through
        return out

    def argmax(self) -> ArchConfig:
        """The most likely choice of every decision."""
        return ArchConfig(tuple(
            (d.key, d.choices[int(self.logits(d.key).argmax())]) for d in self.space.decisions
        ))

    def one_hot_argmax(self) -> dict[str, torch.Tensor]:
        """`argmax` as one-hot vectors on α's device (no host read: usable inside a step)."""
        return {d.key: _one_hot(self.logits(d.key).detach().argmax(), self.logits(d.key))
                for d in self.space.decisions}

    @torch.no_grad()
    def host_probs(self) -> list[torch.Tensor]:
        """softmax(α) per decision on the host, in decision order, read in one copy."""
        flat = torch.cat([F.softmax(self.logits(d.key), -1) for d in self.space.decisions])
        return list(flat.float().cpu().split([len(d.choices) for d in self.space.decisions]))

    def sample(self, generator: torch.Generator,
               probs: list[torch.Tensor] | None = None) -> ArchConfig:
        """A concrete config drawn from softmax(α) (the sandwich rule's random members), or from
        ``probs`` (host tensors, as `host_probs` gives) by inverse CDF on ``generator``."""
        probs = self.host_probs() if probs is None else probs
        draws = torch.rand(len(probs), generator=generator).tolist()
        return ArchConfig(tuple(
            (d.key, d.choices[min(bisect.bisect_right(p.cumsum(0).tolist(), u), len(p) - 1)])
            for d, p, u in zip(self.space.decisions, probs, draws, strict=True)))

    def entropies(self) -> dict[str, torch.Tensor]:
        """Normalised entropy of softmax(α) per decision, in [0, 1] (1 = undecided, 0 =
        settled); differentiable, so the search can penalise indecision."""
        out = {}
        for d, p in zip(self.space.decisions, self.probs().values(), strict=True):
            if len(d.choices) > 1:
                out[d.key] = -(p * p.clamp_min(1e-12).log()).sum() / math.log(len(d.choices))
        return out

    @torch.no_grad()
    def entropy(self) -> dict[str, float]:
        """`entropies` as floats, for logging."""
        return {k: float(h) for k, h in self.entropies().items()}


def _one_hot(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A one-hot vector shaped, typed and placed like ``like`` (`F.one_hot` reads the index
    on the host to check it)."""
    return (torch.arange(len(like), device=like.device) == index).to(like.dtype)


class LaggedProbs:
    """softmax(α) on the host, ``lag`` α steps old, for drawing the sandwich's random members.

    A member's choices must be known on the host (they slice the weights), and reading α's
    current value would wait for the device to finish every queued step. So after each α step
    a copy of softmax(α) starts (asynchronous on CUDA) and is read ``lag`` α steps later, when
    the device has long finished it; α moves little in two steps. The copies go into the
    checkpoint (`state`), so a resumed run draws the same members as an uninterrupted one.
    """

    def __init__(self, arch: ArchParameters, lag: int = 2):
        if lag < 1:
            raise ValueError(f"lag: must be at least 1 α step, got {lag}")
        self.alpha, self.lag = arch, lag
        self.slots: deque | None = None  # (host probs, CUDA event or None), oldest first

    def probs(self) -> list[torch.Tensor]:
        """The oldest copy: what the next draws use (waits for its copy, long finished)."""
        if self.slots is None:
            self.slots = deque([(self.alpha.host_probs(), None)] * self.lag)
        held, event = self.slots[0]
        if event is not None:
            event.synchronize()
        return held

    def push(self) -> None:
        """Start copying the current softmax(α) (call after each α step)."""
        self.probs()
        with torch.no_grad():
            flat = torch.cat([F.softmax(self.alpha.logits(d.key).detach(), -1).float()
                              for d in self.alpha.space.decisions])
        event = None
        if flat.device.type == "cuda":
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = flat.cpu().clone()
        sizes = [len(d.choices) for d in self.alpha.space.decisions]
        self.slots.popleft()
        self.slots.append((list(host.split(sizes)), event))

    def state(self) -> list[list[float]]:
        """Every held copy, oldest first (waits for the copies in flight)."""
        self.probs()
        for _, event in self.slots:
            if event is not None:
                event.synchronize()
        return [torch.cat(held).tolist() for held, _ in self.slots]

    def load(self, state: list[list[float]] | None) -> None:
        """Restore `state`; ``None`` (an older checkpoint) starts from the current α."""
        sizes = [len(d.choices) for d in self.alpha.space.decisions]
        if state is None or len(state) != self.lag or any(len(s) != sum(sizes) for s in state):
            self.slots = None
            return
        self.slots = deque((list(torch.tensor(s).split(sizes)), None) for s in state)
