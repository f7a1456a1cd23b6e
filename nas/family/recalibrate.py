"""Batch-norm recalibration, classifier refit and evaluation of one extracted member.

The shared running statistics were accumulated over many different members during the search,
so they fit none of them; a few training batches through the extracted member in train mode,
with cumulative averaging (``momentum=None``), give it its own statistics (as Once-for-All and
BigNAS do) before its accuracy is measured.
Each exit's classifier is shared too, by every member that ends its stage there at any depth,
and it settles on the deep members' features. Refitting it on the member's own features (a
convex problem: one linear layer, the features fixed) gives the shallow members back about
2 pp on Fashion-MNIST (BENCHMARKS.md); it stays near the shared head, so the deep ones keep it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn
from torchmetrics.classification import MulticlassAccuracy

from costmodels import measure_network_latency
from deploy import exit_classifiers, member_state
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


def refit_classifiers(model: nn.Module, batches: Iterable, num_batches: int,
                      pull: float = 1e-3, max_iter: int = 200) -> nn.Module:
    """Refit every exit's classifier of ``model`` on its features over the first
    ``num_batches`` ``(x, y)`` batches (eval mode): cross-entropy plus ``pull``·‖θ − θ_shared‖²,
    minimised by L-BFGS from the shared weights. The features are computed once."""
    if num_batches < 1:
        raise ValueError(f"classifier batches: must be at least 1, got {num_batches}")
    classifiers = exit_classifiers(model)
    device = next(model.parameters()).device
    features: list[list[torch.Tensor]] = [[] for _ in classifiers]
    hooks = [fc.register_forward_hook(lambda m, inputs, out, got=got: got.append(inputs[0]))
             for fc, got in zip(classifiers, features, strict=True)]
    labels = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, y in itertools.islice(batches, num_batches):
                model(x.to(device))
                labels.append(y.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not labels:
        raise ValueError("classifier refit got no batches: the training loader is empty")
    y = torch.cat(labels)
    for fc, got in zip(classifiers, features, strict=True):
        _fit_linear(fc, torch.cat(got), y, pull, max_iter)
    return model


def _fit_linear(fc: nn.Linear, x: torch.Tensor, y: torch.Tensor, pull: float,
                max_iter: int) -> None:
    shared = [p.detach().clone() for p in fc.parameters()]
    params = [p.detach().clone().requires_grad_() for p in fc.parameters()]
    opt = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = F.cross_entropy(F.linear(x, *params), y) + pull * sum(
            (p - q).square().sum() for p, q in zip(params, shared, strict=True))
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    with torch.no_grad():
        for p, fitted in zip(fc.parameters(), params, strict=True):
            p.copy_(fitted)


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
    state: dict[str, torch.Tensor]  # `member_state`: its statistics and classifiers (or all)
    accuracy: list[float]
    measured_latency_ms: float | None = None
    latency_spread: float | None = None


def evaluate_member(net: SuperNet, config: ArchConfig, train_batches: Iterable,
                    test_batches: Iterable, *, recal_batches: int = 20,
                    classifier_batches: int = 100, test_limit: int | None = None,
                    latency_device: str | None = "cpu",
                    latency_threads: int = 1, latency_repeats: int = 30,
                    own_weights: bool = False) -> MemberEvaluation:
    """Extract ``config``, recalibrate its batch norms, refit its exits' classifiers (not with
    ``classifier_batches=0``), score it per exit and time it (batch 1 on ``latency_device``;
    ``None`` skips the timing). ``own_weights``: ``net`` is the member's own fine-tuned copy,
    so its state holds every tensor (`member_state`)."""
    if classifier_batches < 0:
        raise ValueError(f"classifier batches: 0 (keep the shared classifiers) or more, got "
                         f"{classifier_batches}")
    static = extract(net, net.space.validate(config))
    recalibrate_bn(static, train_batches, recal_batches)
    if classifier_batches:
        refit_classifiers(static, train_batches, classifier_batches)
    static.eval()
    accuracy = exit_accuracy(static, test_batches, net.space.num_classes, test_limit)
    result = MemberEvaluation(config, static, member_state(static, own_weights), accuracy)
    if latency_device is not None:
        space = net.space
        shape = (1, space.input_channels, space.input_size, space.input_size)
        warmup = max(2, latency_repeats // 5)
        result.measured_latency_ms, result.latency_spread = measure_network_latency(
            static, shape, latency_device, threads=latency_threads, warmup=warmup,
            repeats=latency_repeats)
        static.cpu()
    return result
