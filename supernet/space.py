"""The search space: a YAML/dict spec of stages and their choices, and the decisions it implies.

The space is the one source of truth for every decision's key and ordered choices; α, costs and
exports all key on ``Decision.key``. Every spec error names the field, the value and the fix,
and is raised before any model is built.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.layers import make_divisible

from supernet.arch import ArchConfig, Number
from supernet.mix import Choice, Mix
from supernet.topology import BlockKeys

DECISION_KINDS = ("width", "depth", "expand", "kernel", "wbits", "abits")
BLOCK_KINDS = ("expand", "kernel", "run", "dense")  # per block with per_block / skip / grouped
STAGE_FIELDS = {
    "arch", "widths", "depths", "expand_ratios", "kernel_sizes", "stride",
    "weight_bits", "act_bits", "per_block", "skip", "grouped",
}
GROUPED_FIELDS = {"groups", "expand"}
TOP_FIELDS = {
    "name", "input_channels", "input_size", "num_classes", "act", "channel_divisor",
    "stem", "stages", "exits", "weight_bits", "act_bits", "drop_path", "head",
    "first_block_residual",
}
STEM_FIELDS = {"channels", "kernel", "stride"}
HEAD_FIELDS = {"channels"}


class SpaceError(ValueError):
    """A search-space spec that cannot describe a network; the message names the field."""


@dataclass(frozen=True)
class Decision:
    """One architecture decision: a stable key and its choices ordered cheapest → dearest."""

    key: str
    kind: str  # one of DECISION_KINDS, BLOCK_KINDS or "exit"
    choices: tuple[Number, ...]
    stage: int | None = None  # 1-based stage number; None for network-wide decisions


@dataclass(frozen=True)
class StageSpec:
    """One stage of elastic inverted-residual blocks; the last value of each list is its largest."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    expand_ratios: tuple[Number, ...]
    kernel_sizes: tuple[int, ...]
    stride: int
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    per_block: bool = False  # expand and kernel decided per block, not per stage
    skip: bool = False  # a skip choice for every block: the identity, or a 1x1 conv
    grouped: Grouped | None = None  # a grouped-1x1-convs choice at one expansion


@dataclass(frozen=True)
class Grouped:
    """FBNet's grouped candidates: at expansion ``expand`` (the stage's smallest, so a grouped
    block nests under every other) a block may run both of its 1×1 convs in ``groups`` groups,
    with a channel shuffle between them. Decided by a ``dense`` decision (0: grouped, 1:
    dense); at any other expansion the block is dense whatever it says."""

    groups: int
    expand: Number


@dataclass(frozen=True)
class StemSpec:
    channels: int
    kernel: int = 3
    stride: int = 1


class SearchSpace:
    """Parsed, validated spec; lists decisions, samples and checks `ArchConfig`s."""

    def __init__(self, spec: Mapping[str, Any]):
        self.spec = dict(spec)
        _check_keys(self.spec, TOP_FIELDS, "space")
        self.name = str(self.spec.get("name", "space"))
        self.input_channels = _pos_int(self.spec.get("input_channels", 1), "input_channels")
        self.input_size = _pos_int(self.spec.get("input_size", 28), "input_size")
        self.num_classes = _pos_int(self.spec.get("num_classes", 10), "num_classes")
        self.act = str(self.spec.get("act", "relu6"))
        self.channel_divisor = _pos_int(self.spec.get("channel_divisor", 8), "channel_divisor")
        self.drop_path = float(self.spec.get("drop_path", 0.0))
        if not 0.0 <= self.drop_path < 1.0:
            raise SpaceError(f"drop_path: must be in [0, 1), got {self.drop_path}")
        self.stem = _parse_stem(self.spec.get("stem"))
        stages = self.spec.get("stages")
        if not isinstance(stages, list) or not stages:
            raise SpaceError(f"stages: must be a non-empty list of stage specs, got {stages!r}")
        default_bits = {f: self.spec.get(f, [32]) for f in ("weight_bits", "act_bits")}
        self.stages = tuple(
            _parse_stage(s, f"stages[{i}]", default_bits) for i, s in enumerate(stages)
        )
        self.exit_stages = _parse_exits(self.spec.get("exits", []), len(self.stages))
        self.head_channels = _parse_head(self.spec.get("head"))
        self.first_block_residual = self.spec.get("first_block_residual", False)
        if not isinstance(self.first_block_residual, bool):
            raise SpaceError(f"first_block_residual: must be true or false, got "
                             f"{self.first_block_residual!r}")
        for i in range(1, len(self.stages) + 1):
            self._check_grouped(i)
        self.decisions = self._build_decisions()
        self._by_key = {d.key: d for d in self.decisions}
        self.blocks = self._build_blocks()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"search-space file {str(path)!r} does not exist")
        with path.open() as f:
            spec = yaml.safe_load(f)
        if not isinstance(spec, dict):
            raise SpaceError(f"{path}: a space spec must be a YAML mapping, got {type(spec)}")
        return cls(spec)

    def _build_decisions(self) -> tuple[Decision, ...]:
        out = []
        for i, st in enumerate(self.stages, 1):
            per_stage = ("width", "depth", "wbits", "abits") if st.per_block else DECISION_KINDS
            for kind, choices in zip(DECISION_KINDS, (
                st.widths, st.depths, st.expand_ratios, st.kernel_sizes,
                st.weight_bits, st.act_bits,
            ), strict=True):
                if kind in per_stage:
                    out.append(Decision(f"stage{i}.{kind}", kind, tuple(choices), i))
            for j in range(1, st.depths[-1] + 1):
                p = f"stage{i}.block{j}."
                if st.per_block:
                    out.append(Decision(p + "expand", "expand", st.expand_ratios, i))
                    out.append(Decision(p + "kernel", "kernel", st.kernel_sizes, i))
                if st.grouped:
                    per = p if st.per_block else f"stage{i}."
                    if j == 1 or st.per_block:
                        out.append(Decision(per + "dense", "dense", (0, 1), i))
                if st.skip:
                    out.append(Decision(p + "run", "run", (0, 1), i))
        out.append(Decision("exit", "exit", self.exit_stages))
        return tuple(out)

    def _check_grouped(self, stage: int) -> None:
        """Grouped 1x1 convs need fixed widths that the groups divide (in, hidden and out)."""
        st = self.stages[stage - 1]
        if st.grouped is None:
            return
        where = f"stages[{stage - 1}].grouped"
        ins = self._in_widths(stage)
        if len(ins) != 1 or len(st.widths) != 1:
            raise SpaceError(f"{where}: grouped convs need one fixed width for the stage and its "
                             f"input, got widths {list(st.widths)} after {list(ins)}")
        g = st.grouped.groups
        for name, c in (("input width", ins[0]), ("width", st.widths[0]),
                        ("hidden width", make_divisible(ins[0] * st.grouped.expand,
                                                        self.channel_divisor)),
                        ("hidden width", make_divisible(st.widths[0] * st.grouped.expand,
                                                        self.channel_divisor))):
            if c % g:
                raise SpaceError(f"{where}: {g} groups do not divide the {name} {c}")

    def _identity_fits(self, stage: int, index: int) -> bool:
        """Whether block ``index`` of ``stage`` keeps its input's shape whatever the decisions
        (later blocks always; a first block with stride 1 and one fixed, equal width)."""
        if index > 1:
            return True
        st = self.stages[stage - 1]
        ins = self._in_widths(stage)
        return st.stride == 1 and len(ins) == 1 and st.widths == ins

    def _in_widths(self, stage: int) -> tuple[int, ...]:
        """The widths a stage's input can have: the stem's channels or the previous stage's."""
        return (self.stem.channels,) if stage == 1 else self.stages[stage - 2].widths

    def _build_blocks(self) -> tuple[BlockKeys, ...]:
        out = []
        for i, st in enumerate(self.stages, 1):
            p = f"stage{i}."
            for j in range(1, st.depths[-1] + 1):
                b = f"{p}block{j}."
                per = b if st.per_block else p
                grouped = st.grouped
                out.append(BlockKeys(
                    name=f"{p}block{j}", stage=i, index=j,
                    in_width=self.stage_in_width(i) if j == 1 else p + "width",
                    width=p + "width", expand=per + "expand", kernel=per + "kernel",
                    wbits=p + "wbits", abits=p + "abits", depth=p + "depth",
                    run=(b + "run") if (b + "run") in self._by_key else None,
                    stride=st.stride if j == 1 else 1,
                    residual=j > 1 or (self.first_block_residual and self._identity_fits(i, 1)),
                    skip_conv=st.skip and not self._identity_fits(i, j),
                    dense=(per + "dense") if grouped else None,
                    groups=grouped.groups if grouped else 1,
                    grouped_expand=grouped.expand if grouped else None,
                ))
        return tuple(out)

    def block(self, name: str) -> BlockKeys:
        """The block called ``name`` (``stage2.block1``)."""
        for blk in self.blocks:
            if blk.name == name:
                return blk
        raise KeyError(f"no block {name!r} in space {self.name!r}")

    # -- decisions ----------------------------------------------------------------------------
    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.decisions)

    def decision(self, key: str) -> Decision:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"no decision {key!r} in space {self.name!r}; "
                           f"decisions are {list(self._by_key)}") from None

    def stage_in_width(self, stage: int) -> int | str:
        """The input width of a stage: the stem's channels or the previous stage's width key."""
        return self.stem.channels if stage == 1 else f"stage{stage - 1}.width"

    # -- configs ------------------------------------------------------------------------------
    def largest(self) -> ArchConfig:
        return self._pick(lambda d: d.choices[-1])

    def smallest(self) -> ArchConfig:
        return self._pick(lambda d: d.choices[0])

    def sample(self, rng: random.Random) -> ArchConfig:
        """A uniformly random config; pass a seeded `random.Random` so ranks agree."""
        return self._pick(lambda d: rng.choice(d.choices))

    def _pick(self, choose) -> ArchConfig:
        return ArchConfig(tuple((d.key, choose(d)) for d in self.decisions))

    def validate(self, arch: ArchConfig) -> ArchConfig:
        """Raise a clear error unless ``arch`` has exactly this space's decisions and choices."""
        missing = [k for k in self.keys if k not in arch]
        extra = [k for k in arch if k not in self._by_key]
        if missing or extra:
            raise SpaceError(f"config does not belong to space {self.name!r}: "
                             f"missing decisions {missing}, unknown decisions {extra}")
        for d in self.decisions:
            if arch[d.key] not in d.choices:
                raise SpaceError(f"config does not belong to space {self.name!r}: "
                                 f"{d.key}={arch[d.key]} is not one of {list(d.choices)}")
        return arch

    def index(self, arch: ArchConfig) -> dict[str, int]:
        """Choice index per decision (the position in ``Decision.choices``)."""
        self.validate(arch)
        return {d.key: d.choices.index(arch[d.key]) for d in self.decisions}

    def one_hot(self, arch: ArchConfig) -> dict[str, torch.Tensor]:
        """The relaxed form of a concrete config: a one-hot probability vector per decision."""
        idx = self.index(arch)
        return {
            d.key: torch.nn.functional.one_hot(torch.tensor(idx[d.key]), len(d.choices)).float()
            for d in self.decisions
        }

    def resolve(self, arch: ArchConfig | Mapping[str, torch.Tensor]) -> dict[str, Choice]:
        """Per decision, the concrete value (from an `ArchConfig`) or a `Mix` (from probabilities)."""
        if isinstance(arch, ArchConfig):
            return dict(self.validate(arch).items())
        missing = [k for k in self.keys if k not in arch]
        if missing:
            raise SpaceError(f"relaxed architecture lacks probabilities for {missing}")
        out: dict[str, Choice] = {}
        for d in self.decisions:
            probs = arch[d.key]
            if probs.shape != (len(d.choices),):
                raise SpaceError(f"{d.key}: expected {len(d.choices)} probabilities "
                                 f"(one per choice {list(d.choices)}), got shape {tuple(probs.shape)}")
            out[d.key] = Mix(probs, d.choices)
        return out

    def describe(self) -> str:
        """A human-readable table of the decisions."""
        lines = [f"space {self.name!r}: input {self.input_channels}x{self.input_size}x"
                 f"{self.input_size}, {self.num_classes} classes, {len(self.stages)} stages, "
                 f"exits after stages {list(self.exit_stages)}"]
        lines += [f"  {d.key:<16} {list(d.choices)}" for d in self.decisions]
        n = 1
        for d in self.decisions:
            n *= len(d.choices)
        lines.append(f"  {n:,} decision combinations (fewer networks: e.g. the decisions of a "
                     "stage past the exit change nothing)")
        return "\n".join(lines)


# -- parsing helpers ------------------------------------------------------------------------------
def _check_keys(spec: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}")


def _pos_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpaceError(f"{field}: must be a positive integer, got {value!r}")
    return value


def _ascending(values: Any, field: str, *, integer: bool = True) -> tuple:
    if not isinstance(values, list | tuple) or not values:
        raise SpaceError(f"{field}: must be a non-empty list of choices, got {values!r}")
    for v in values:
        ok = isinstance(v, int) if integer else isinstance(v, int | float)
        if isinstance(v, bool) or not ok or v <= 0:
            kind = "integers" if integer else "numbers"
            raise SpaceError(f"{field}: choices must be positive {kind}, got {v!r} in {values}")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise SpaceError(f"{field}: choices must be strictly increasing (cheapest first), "
                         f"got {list(values)}")
    return tuple(values)


def _bits(values: Any, field: str) -> tuple[int, ...]:
    bits = _ascending(values, field)
    bad = [b for b in bits if not 2 <= b <= 32]
    if bad:
        raise SpaceError(f"{field}: bit-widths must lie in 2..32 (32 = float), got {bad}")
    return bits


def _parse_stem(stem: Any) -> StemSpec:
    if not isinstance(stem, dict):
        raise SpaceError(f"stem: must be a mapping like {{channels: 16}}, got {stem!r}")
    _check_keys(stem, STEM_FIELDS, "stem")
    return StemSpec(
        channels=_pos_int(stem.get("channels"), "stem.channels"),
        kernel=_odd_kernel(stem.get("kernel", 3), "stem.kernel"),
        stride=_pos_int(stem.get("stride", 1), "stem.stride"),
    )


def _parse_head(head: Any) -> int | None:
    """The optional 1x1 head conv's output channels (before the last stage's classifier)."""
    if head is None:
        return None
    if not isinstance(head, dict):
        raise SpaceError(f"head: must be a mapping like {{channels: 1504}}, got {head!r}")
    _check_keys(head, HEAD_FIELDS, "head")
    return _pos_int(head.get("channels"), "head.channels")


def _flag(spec: Mapping[str, Any], field: str, where: str) -> bool:
    v = spec.get(field, False)
    if not isinstance(v, bool):
        raise SpaceError(f"{where}.{field}: must be true or false, got {v!r}")
    return v


def _odd_kernel(k: Any, field: str) -> int:
    k = _pos_int(k, field)
    if k % 2 == 0:
        raise SpaceError(f"{field}: kernel sizes must be odd, got {k}")
    return k


_ARCH_TOKEN = re.compile(r"^(r\d+|k\d+|s\d+|e\d+(\.\d+)?|c\d+)$")


def _decode_arch(arch: str, where: str) -> dict[str, Any]:
    """Read a timm EfficientNet block string (``ir_r2_k3_s2_e6_c24``) with timm's own decoder."""
    from timm.models._efficientnet_builder import decode_arch_def

    try:
        (block, *rest), = decode_arch_def([[arch]])
    except Exception as e:  # timm raises assorted errors on malformed strings
        raise SpaceError(f"{where}.arch: cannot decode {arch!r} as a timm arch string: {e}") from e
    if block["block_type"] != "ir":
        raise SpaceError(f"{where}.arch: only inverted-residual ('ir_…') blocks are elastic, "
                         f"got {block['block_type']!r} in {arch!r}")
    if block.get("se_layer") is not None or block.get("se_ratio"):
        raise SpaceError(f"{where}.arch: squeeze-excite ('_se…') is not supported yet in {arch!r}")
    unsupported = [t for t in arch.split("_")[1:] if not _ARCH_TOKEN.match(t)]
    if unsupported:  # timm knows them (groups, no skip, activation…); the elastic block does not
        raise SpaceError(f"{where}.arch: option(s) {unsupported} in {arch!r} are not implemented "
                         "by the elastic block; it reads only r (repeats), k (kernel), s "
                         "(stride), e (expansion) and c (channels) — remove them")
    return {
        "depth": 1 + len(rest), "kernel": block["dw_kernel_size"], "stride": block["stride"],
        "expand": _plain_number(block["exp_ratio"]), "width": block["out_chs"],
    }


def _plain_number(x: float) -> Number:
    return int(x) if float(x).is_integer() else float(x)


def _parse_stage(spec: Any, where: str, default_bits: Mapping[str, Any]) -> StageSpec:
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: must be a mapping, got {spec!r}")
    _check_keys(spec, STAGE_FIELDS, where)
    largest = _decode_arch(spec["arch"], where) if "arch" in spec else {}

    def choices(field: str, kind: str, *, integer: bool = True) -> tuple:
        if field not in spec:
            if kind not in largest:
                raise SpaceError(f"{where}.{field}: missing (give it, or an 'arch' string)")
            return (largest[kind],)
        values = _ascending(spec[field], f"{where}.{field}", integer=integer)
        if kind in largest and values[-1] != largest[kind]:
            raise SpaceError(f"{where}.{field}: the largest choice {values[-1]} must equal the "
                             f"arch string's {largest[kind]} ({spec['arch']!r})")
        return values

    expand_ratios = choices("expand_ratios", "expand", integer=False)
    kernels = choices("kernel_sizes", "kernel")
    for k in kernels:
        _odd_kernel(k, f"{where}.kernel_sizes")
    stride = spec.get("stride", largest.get("stride"))
    if stride is None:
        raise SpaceError(f"{where}.stride: missing (give it, or an 'arch' string)")
    return StageSpec(
        widths=choices("widths", "width"),
        depths=choices("depths", "depth"),
        expand_ratios=expand_ratios,
        kernel_sizes=kernels,
        stride=_pos_int(stride, f"{where}.stride"),
        weight_bits=_bits(spec.get("weight_bits", default_bits["weight_bits"]),
                          f"{where}.weight_bits"),
        act_bits=_bits(spec.get("act_bits", default_bits["act_bits"]), f"{where}.act_bits"),
        per_block=_flag(spec, "per_block", where),
        skip=_flag(spec, "skip", where),
        grouped=_parse_grouped(spec.get("grouped"), f"{where}.grouped", expand_ratios),
    )


def _parse_grouped(spec: Any, where: str, expand_ratios: tuple[Number, ...]) -> Grouped | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: must be a mapping like {{groups: 2, expand: 1}}, got {spec!r}")
    _check_keys(spec, GROUPED_FIELDS, where)
    groups = _pos_int(spec.get("groups"), f"{where}.groups")
    if groups < 2:
        raise SpaceError(f"{where}.groups: a grouped choice needs 2 or more groups, got {groups}")
    expand = spec.get("expand")
    if expand != expand_ratios[0]:  # nested: a grouped block ⊆ the dense one ⊆ a wider one
        raise SpaceError(f"{where}.expand: grouped convs are offered at the stage's smallest "
                         f"expand ratio {expand_ratios[0]}, got {expand!r}")
    return Grouped(groups, expand)


def _parse_exits(exits: Any, num_stages: int) -> tuple[int, ...]:
    """Exit choices: stage numbers with a classifier head; the last stage always has one."""
    if not isinstance(exits, list):
        raise SpaceError(f"exits: must be a list of stage numbers (1-based), got {exits!r}")
    for e in exits:
        if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= num_stages:
            raise SpaceError(f"exits: {e!r} is not a stage; stages are numbered 1..{num_stages}")
    return tuple(sorted(set(exits) | {num_stages}))
