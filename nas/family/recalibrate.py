"""Batch-norm recalibration and evaluation of one extracted member.

The shared running statistics were accumulated over many different members during the search,
so they fit none of them; a few training batches through the extracted member in train mode,
with cumulative averaging (``momentum=None``), give it its own statistics (as Once-for-All and
BigNAS do) before its accuracy is measured.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torchmetrics.classification import MulticlassAccuracy

from costmodels import measure_network_latency
from deploy import member_bn_state
from supernet import ArchConfig, SuperNet, extract


def recalibrate_bn(model: nn.Module, batches: Iterable, num_batches: int) -> nn.Module:
    """Reset every batch norm and re-estimate its statistics as the plain average over the
    first ``num_batches`` ``(x, y)`` batches (`torch.optim.swa_utils.update_bn`, which restores
    the model's mode and momenta)."""
    if num_batches < 1:
        raise ValueError(f"recal batches: must be at least 1, got {num_batches}")
    seen = 0

    def counted():
        nonlocal seen
        for batch in itertools.islice(batches, num_batches):
            seen += 1
            yield batch

    update_bn(counted(), model, device=next(model.parameters()).device)
    if seen == 0:
        raise ValueError("recalibration got no batches: the training loader is empty")
    return model


@torch.no_grad()
def exit_accuracy(model: nn.Module, loader: Iterable, num_classes: int,
                  max_batches: int | None = None) -> list[float]:
    """Top-1 accuracy of every exit of ``model`` (a list of logits per forward), in [0, 1]."""
    metrics: list[MulticlassAccuracy] = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        logits = model(x.to(device))
        if not metrics:
            metrics = [MulticlassAccuracy(num_classes, average="micro").to(device)
                       for _ in logits]
        for metric, z in zip(metrics, logits, strict=True):
            metric.update(z, y.to(device))
    model.train(was_training)
    if not metrics:
        raise ValueError("accuracy: the evaluation loader is empty")
    return [float(m.compute()) for m in metrics]


@dataclass
class MemberEvaluation:
    """An extracted, recalibrated member and what it scores (accuracy per exit in [0, 1])."""

    config: ArchConfig
    module: nn.Module
    bn_state: dict[str, torch.Tensor]
    accuracy: list[float]
    measured_latency_ms: float | None = None
    latency_spread: float | None = None


def evaluate_member(net: SuperNet, config: ArchConfig, train_batches: Iterable,
                    test_batches: Iterable, *, recal_batches: int = 20,
                    test_limit: int | None = None, latency_device: str | None = "cpu",
                    latency_threads: int = 1, latency_repeats: int = 30) -> MemberEvaluation:
    """Extract ``config``, recalibrate its batch norms, score it per exit and time it
    (batch 1 on ``latency_device``; ``None`` skips the timing)."""
    static = extract(net, net.space.validate(config))
    recalibrate_bn(static, train_batches, recal_batches)
    static.eval()
    accuracy = exit_accuracy(static, test_batches, net.space.num_classes, test_limit)
    result = MemberEvaluation(config, static, member_bn_state(static), accuracy)
    if latency_device is not None:
        space = net.space
        shape = (1, space.input_channels, space.input_size, space.input_size)
        warmup = max(2, latency_repeats // 5)
        result.measured_latency_ms, result.latency_spread = measure_network_latency(
            static, shape, latency_device, threads=latency_threads, warmup=warmup,
            repeats=latency_repeats)
        static.cpu()
    return result
