"""Block-level signatures, and the slots a table prices a space by.

Published lookup tables (HW-NAS-Bench, FBNet's) time a whole inverted-residual block, not its
three convolutions: a `BlockSignature` is the supernet's `BlockShape` run on ``batch`` samples.
A table may hold block entries, layer entries or both: `priced_slots` prices each block position
by its block entries when the table has every shape that position can take, else by its layers
(stem, head conv and classifiers are always layers). Expected, concrete and coverage all read
the same slots, so a one-hot expected cost equals the table sum exactly.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass

from costmodels.signature import Batched, OpSignature, SignatureError
from supernet.arch import ArchConfig, Number
from supernet.layers import BlockShape, Condition, block_slots, holds, layer_slots
from supernet.space import SearchSpace

_BLOCK_KEY = re.compile(
    r"^block_i(?P<in_channels>\d+)_o(?P<out_channels>\d+)_e(?P<expand>\d+(\.\d+)?)"
    r"_k(?P<kernel>\d+)_s(?P<stride>\d+)_r(?P<in_size>\d+)_w(?P<weight_bits>\d+)"
    r"_a(?P<act_bits>\d+)_b(?P<batch>\d+)(?P<res>_res)?(_g(?P<groups>\d+))?$")
_SKIP_KEY = re.compile(r"^skip_c(?P<channels>\d+)_r(?P<in_size>\d+)_b(?P<batch>\d+)$")
_SKIP_CONV_KEY = re.compile(
    r"^skip_i(?P<in_channels>\d+)_o(?P<out_channels>\d+)_s(?P<stride>\d+)_r(?P<in_size>\d+)"
    r"_w(?P<weight_bits>\d+)_a(?P<act_bits>\d+)_b(?P<batch>\d+)$")


@dataclass(frozen=True, order=True)
class BlockSignature(Batched, BlockShape):
    """One whole block (or a taken skip) as the hardware sees it, run on ``batch`` samples."""

    batch: int = 1

    @classmethod
    def from_shape(cls, shape: BlockShape, batch: int = 1) -> BlockSignature:
        return cls(**asdict(shape.block()), batch=batch)

    @property
    def key(self) -> str:
        """``block_i16_o24_e6_k3_s2_r32_w32_a32_b1`` (``_res`` with the residual add, then
        ``_g2`` with grouped 1x1 convs), ``skip_c16_r32_b1`` (the identity) or
        ``skip_i16_o24_s2_r32_w32_a32_b1`` (a 1x1 conv skip)."""
        if self.identity:
            return f"skip_c{self.in_channels}_r{self.in_size}_b{self.batch}"
        if self.kind == "skip":
            return (f"skip_i{self.in_channels}_o{self.out_channels}_s{self.stride}"
                    f"_r{self.in_size}_w{self.weight_bits}_a{self.act_bits}_b{self.batch}")
        return (f"block_i{self.in_channels}_o{self.out_channels}_e{self.expand:g}_k{self.kernel}"
                f"_s{self.stride}_r{self.in_size}_w{self.weight_bits}_a{self.act_bits}"
                f"_b{self.batch}" + ("_res" if self.residual else "")
                + (f"_g{self.groups}" if self.groups != 1 else ""))

    @classmethod
    def parse(cls, key: str) -> BlockSignature:
        m = _SKIP_KEY.match(key)
        if m:
            c, r, b = (int(m[g]) for g in ("channels", "in_size", "batch"))
            return cls("skip", c, c, 0, 0, 1, r, batch=b)
        m = _SKIP_CONV_KEY.match(key)
        if m:
            i, o, s, r, w, a, b = (int(m[g]) for g in (
                "in_channels", "out_channels", "stride", "in_size", "weight_bits", "act_bits",
                "batch"))
            return cls("skip", i, o, 0, 0, s, r, w, a, batch=b)
        m = _BLOCK_KEY.match(key)
        if m is None:
            raise SignatureError(f"{key!r} is not a block key; block keys look like "
                                 "'block_i16_o24_e6_k3_s2_r32_w32_a32_b1' (optionally '_res', "
                                 "then '_g2'), 'skip_c16_r32_b1' or "
                                 "'skip_i16_o24_s2_r32_w32_a32_b1'")
        e = float(m["expand"])
        return cls("block", int(m["in_channels"]), int(m["out_channels"]),
                   int(e) if e.is_integer() else e,
                   *(int(m[g]) for g in ("kernel", "stride", "in_size", "weight_bits",
                                         "act_bits")),
                   batch=int(m["batch"]), residual=m["res"] is not None,
                   groups=int(m["groups"] or 1))

    def describe(self) -> str:
        if self.identity:
            return (f"skip (identity) of {self.in_channels} channels on {self.in_size}x"
                    f"{self.in_size}px, batch {self.batch}")
        if self.kind == "skip":
            return (f"skip (1x1 conv) {self.in_channels}->{self.out_channels} s{self.stride} "
                    f"on {self.in_size}x{self.in_size}px, {self.weight_bits}-bit weights, "
                    f"{self.act_bits}-bit activations, batch {self.batch}")
        groups = f" in {self.groups} groups" if self.groups != 1 else ""
        return (f"block {self.in_channels}->{self.out_channels} expand {self.expand:g}{groups} "
                f"k{self.kernel} s{self.stride}{' +residual' if self.residual else ''} on "
                f"{self.in_size}x{self.in_size}px, {self.weight_bits}-bit weights, "
                f"{self.act_bits}-bit activations, batch {self.batch}")


Signature = OpSignature | BlockSignature


def parse_key(key: str) -> Signature:
    """The signature (layer or block) a table key was made from."""
    if key.startswith(("block_", "skip_")):
        return BlockSignature.parse(key)
    return OpSignature.parse(key)


def is_block_key(key: str) -> bool:
    return key.startswith(("block_", "skip_"))


@dataclass(frozen=True)
class PricedSlot:
    """A position a table prices: its decision keys, when it runs and the signature it has for
    given values."""

    name: str
    keys: tuple[str, ...]
    runs_if: tuple[Condition, ...]
    signature: Callable[[Mapping[str, Number]], Signature]

    def runs(self, values: Mapping[str, Number]) -> bool:
        return holds(self.runs_if, values)

    def signatures(self, space: SearchSpace) -> Iterator[tuple[tuple[int, ...], Signature]]:
        """Every ``(choice indices, signature)`` over the product of its keys' choices."""
        for idx, values in _product(space, self.keys):
            yield idx, self.signature(values)


def priced_slots(space: SearchSpace, table_keys: Collection[str], batch: int = 1
                 ) -> list[PricedSlot]:
    """The slots ``space`` is priced by under a table with ``table_keys``, in execution order.

    A block position is priced whole when the table has all its block signatures, or when the
    table holds block entries and lacks some of the position's layer signatures (so what is
    missing is named in the table's own terms); otherwise by its three layers.
    """
    layers = {s.name: s for s in layer_slots(space)}
    has_blocks = any(is_block_key(k) for k in table_keys)
    by_block: dict[str, PricedSlot] = {}
    for b in block_slots(space):
        keys = tuple(dict.fromkeys(b.shape_keys))
        block = PricedSlot(b.name, keys, b.runs_if,
                           lambda v, build=b.build: BlockSignature.from_shape(build(v), batch))
        if not has_blocks:
            continue
        whole = all(s.key in table_keys for _, s in block.signatures(space))
        parts = all(s.key in table_keys for name in b.layers
                    for _, s in _layer(layers[name], batch).signatures(space))
        if whole or not parts:
            by_block[b.layers[0]] = block
            for name in b.layers:
                layers.pop(name)
    out = []
    for slot in layer_slots(space):
        if slot.name in by_block:
            out.append(by_block[slot.name])
        elif slot.name in layers:
            out.append(_layer(slot, batch))
    return out


def _layer(slot, batch: int) -> PricedSlot:
    return PricedSlot(slot.name, tuple(dict.fromkeys(slot.shape_keys)), slot.runs_if,
                      lambda v, build=slot.build: OpSignature.from_shape(build(v), batch))


def _product(space: SearchSpace, keys: tuple[str, ...]
             ) -> Iterator[tuple[tuple[int, ...], dict[str, Number]]]:
    choices = [space.decision(k).choices for k in keys]
    for idx in itertools.product(*(range(len(c)) for c in choices)):
        yield idx, {k: c[i] for k, c, i in zip(keys, choices, idx, strict=True)}


def required_signatures(space: SearchSpace, table_keys: Collection[str], batch: int = 1
                        ) -> dict[str, Signature]:
    """Key → signature of everything a table with ``table_keys`` must hold to price ``space``."""
    return {s.key: s for slot in priced_slots(space, table_keys, batch)
            for _, s in slot.signatures(space)}


def block_signatures(space: SearchSpace, batch: int = 1) -> set[BlockSignature]:
    """Every block (and skip) signature any member of ``space`` can run."""
    return {BlockSignature.from_shape(b.build(v), batch) for b in block_slots(space)
            for _, v in _product(space, tuple(dict.fromkeys(b.shape_keys)))}


def member_signatures(space: SearchSpace, slots: list[PricedSlot], arch: ArchConfig
                      ) -> list[tuple[Signature, int]]:
    """``(signature, layer count)`` of every priced slot that runs in ``arch``, in order."""
    values = space.validate(arch)
    return [(sig, layer_count(sig)) for sig in (s.signature(values) for s in slots
                                                 if s.runs(values))]


def layer_count(sig: Signature) -> int:
    """Layers a signature stands for: 3 for a block, 0 for an identity skip, 1 for a layer or
    a 1x1 conv skip."""
    if isinstance(sig, BlockSignature):
        return 3 if sig.kind == "block" else 0 if sig.identity else 1
    return 1
