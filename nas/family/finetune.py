"""Fine-tune a member's own copy of the weights, distilled from the family's top member.

Why: a member that shares every weight with deeper members can trail the same network trained
alone. On Fashion-MNIST the two shallowest members of the 10-epoch family, 5 and 16 thousand
parameters, trail their twins by 2.9 and 2.4 pp although their classifiers are refit; their
whole weights, trained from the shared ones on the dearest member's soft labels for a fraction
of a from-scratch run, get most of it back (BENCHMARKS.md, "Member fine-tune"). The member then
ships those weights instead of the shared ones, as Once-for-All optionally fine-tunes its
specialised networks; its config, costs and run-time switch stay as they were.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from tqdm import tqdm

from supernet import ArchConfig, SuperNet


def dearest(members: Sequence, metric: str):
    """The member that costs most by ``metric``: the teacher of the others."""
    return max(members, key=lambda m: m.costs[metric])


def endless(loader: Iterable) -> Iterator:
    """The loader's batches, epoch after epoch (a fresh pass each time: no batch is cached)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("fine-tune: the training loader is empty")


def finetune_members(net: SuperNet, configs: Sequence[ArchConfig], teacher: nn.Module,
                     batches: Iterable, *, steps: int, lr: float = 0.02,
                     weight_decay: float = 4e-5, progress: bool = False) -> list[SuperNet]:
    """One copy of ``net`` per config, each trained ``steps`` batches at its config on
    ``teacher``'s soft labels (its last exit's softmax, eval mode) for every exit of the
    member: SGD with Nesterov momentum 0.9, ``lr`` annealed to 0 by a cosine. They train side
    by side, so the teacher runs once per batch for all of them (it costs more than the small
    members' own steps). ``net`` itself is left as it was."""
    if steps < 1:
        raise ValueError(f"fine-tune steps: must be at least 1, got {steps}")
    configs = [net.space.validate(c) for c in configs]
    copies = [copy.deepcopy(net).train() for _ in configs]
    device = next(net.parameters()).device
    opts = [create_optimizer_v2(c, "sgd", lr=lr, weight_decay=weight_decay, momentum=0.9)
            for c in copies]
    schedules = [CosineLRScheduler(o, t_initial=steps, lr_min=0.0, t_in_epochs=False)
                 for o in opts]
    soft_ce = SoftTargetCrossEntropy()
    teacher_was_training = teacher.training
    teacher.eval()
    bar = tqdm(total=steps, desc="fine-tuning", leave=False, disable=not progress)
    try:
        for step, (x, _) in zip(range(steps), endless(batches), strict=False):
            x = x.to(device)
            with torch.no_grad():
                target = F.softmax(teacher(x)[-1].float(), -1)
            for own, config, opt, schedule in zip(copies, configs, opts, schedules,
                                                  strict=True):
                logits = own(x, config)
                loss = sum(soft_ce(z, target) for z in logits) / len(logits)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step_update(step + 1)
            bar.update()
    finally:
        bar.close()
        teacher.train(teacher_was_training)
    return [c.eval() for c in copies]
