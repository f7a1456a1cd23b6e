"""The family file (``family.pt``): one writer, one reader, one member record, a format version.

It holds the shared supernet weights, the space spec and every member's config, costs and own
state (batch-norm statistics and exit classifiers; every weight of a member fine-tuned on its
own copy), as plain tensors, dicts and numbers, so
``torch.load(weights_only=True)`` reads it and no code from the file ever runs.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from supernet.arch import ArchConfig
from supernet.io import CorruptFileError

FAMILY_FORMAT = "hwnas-family"
FAMILY_VERSION = 4  # 4: a member may hold all its weights (fine-tuned on its own copy)
# 3: each member's exit classifiers beside its batch-norm statistics; 2: the statistics alone
READABLE_VERSIONS = (2, 3, 4)
EXPORT_FIX = "export it again with `hwnas export --ckpt <search.ckpt> --out <dir>`"


class FamilyError(CorruptFileError):
    """A family or member file that cannot be used; the message names the file and the fix."""


def load_tensors(path: str | Path, what: str, fix: str = EXPORT_FIX,
                 map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one clear line for a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise FamilyError(f"{what} {str(path)!r} does not exist; {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        reason = "it holds objects other than tensors, numbers, strings and dicts"
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise FamilyError(f"{path}: not a readable {what} ({reason}); it is truncated, tampered "
                      f"with or another kind of file; {fix}") from None


def member_state(member: nn.Module, own_weights: bool = False) -> dict[str, torch.Tensor]:
    """What a member holds of its own, keyed by its own names, as ``load_state_dict`` expects
    them: the running statistics of every batch norm (``stages.1.0.bn2.running_mean``) and
    the weights of every exit's classifier (``heads.2.fc.weight``), both fitted to it alone at
    export; everything else is the shared supernet's. With ``own_weights`` (a member
    fine-tuned on its own copy) every tensor of the member is its own."""
    classifiers = classifier_keys(member)
    return {k: v.detach().cpu().clone() for k, v in member.state_dict().items()
            if own_weights or k.endswith((".running_mean", ".running_var")) or k in classifiers}


def exit_classifiers(member: nn.Module) -> list[nn.Linear]:
    """The last linear layer of each exit head, shallowest exit first."""
    return [[m for m in head.modules() if isinstance(m, nn.Linear)][-1]
            for head in member.heads.values()]


def classifier_keys(member: nn.Module) -> set[str]:
    names = {id(m): n for n, m in member.named_modules()}
    return {f"{names[id(fc)]}.{p}" for fc in exit_classifiers(member)
            for p, _ in fc.named_parameters()}


@dataclass
class MemberRecord:
    """One member as it ships: its config, table costs (metric → value), the cost of running up
    to each of its exits (metric → one value per exit, shallowest first), its own state
    (`member_state`: recalibrated batch-norm statistics, refit exit classifiers), test accuracy
    per exit in [0, 1], α log-probability and the user budgets it was picked for."""

    name: str
    config: ArchConfig
    costs: dict[str, float]
    exit_costs: dict[str, list[float]]
    state: dict[str, torch.Tensor]
    accuracy: list[float] = field(default_factory=list)
    log_prob: float = 0.0
    budgets: list[str] = field(default_factory=list)
    exit_stages: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config.to_dict(), "costs": dict(self.costs),
                "exit_costs": {k: list(v) for k, v in self.exit_costs.items()},
                "state": dict(self.state), "accuracy": list(self.accuracy),
                "log_prob": float(self.log_prob), "budgets": list(self.budgets),
                "exit_stages": list(self.exit_stages)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemberRecord:
        return cls(name=str(d["name"]), config=ArchConfig.from_dict(d["config"]),
                   costs={k: float(v) for k, v in d["costs"].items()},
                   exit_costs={k: [float(x) for x in v] for k, v in d["exit_costs"].items()},
                   state=dict(d["state"] if "state" in d else d["bn"]),  # "bn": version 2
                   accuracy=[float(a) for a in d.get("accuracy", [])],
                   log_prob=float(d.get("log_prob", 0.0)), budgets=list(d.get("budgets", [])),
                   exit_stages=tuple(int(s) for s in d.get("exit_stages", ())))


@dataclass
class FamilyFile:
    """What ``family.pt`` holds: the space spec, the shared supernet ``state_dict``, α's
    probabilities, the members (cheapest first by ``metric``) and the budget picks."""

    space: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    members: list[MemberRecord]
    metric: str
    table_id: str = ""
    alpha: dict[str, torch.Tensor] = field(default_factory=dict)
    budget_picks: dict[str, str] = field(default_factory=dict)
    recal_batches: int = 0


def write_family(family: FamilyFile, path: str | Path) -> Path:
    """Save ``family`` as a weights-only loadable ``family.pt``."""
    path = Path(path)
    torch.save({
        "format": FAMILY_FORMAT, "version": FAMILY_VERSION, "space": family.space,
        "table_id": family.table_id, "metric": family.metric,
        "state_dict": {k: v.detach().cpu().clone() for k, v in family.state_dict.items()},
        "alpha": {k: v.detach().cpu() for k, v in family.alpha.items()},
        "members": [m.to_dict() for m in family.members],
        "budget_picks": dict(family.budget_picks), "recal_batches": family.recal_batches,
    }, path)
    return path


def read_family(path: str | Path, map_location: str | torch.device = "cpu") -> FamilyFile:
    """Load ``family.pt`` with ``weights_only``; a damaged, foreign or other-version file is a
    `FamilyError` that names the file and how to get a good one."""
    data = load_tensors(path, "family checkpoint", map_location=map_location)
    if not isinstance(data, dict) or data.get("format") != FAMILY_FORMAT:
        raise FamilyError(f"{path}: not an hwnas family checkpoint (no format "
                          f"{FAMILY_FORMAT!r}); pass the family.pt written by `hwnas export`")
    if data.get("version") not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise FamilyError(f"{path}: family format version {data.get('version')!r}, this hwnas "
                          f"reads versions {readable}; {EXPORT_FIX} using this hwnas")
    try:
        return FamilyFile(
            space=data["space"], state_dict=data["state_dict"],
            members=[MemberRecord.from_dict(m) for m in data["members"]],
            metric=str(data["metric"]), table_id=str(data.get("table_id", "")),
            alpha=dict(data.get("alpha", {})), budget_picks=dict(data.get("budget_picks", {})),
            recal_batches=int(data.get("recal_batches", 0)))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FamilyError(f"{path}: malformed family checkpoint ({type(e).__name__}: {e}); "
                          f"{EXPORT_FIX}") from None
