"""Op signatures: everything about one layer that its cost on a target depends on.

A signature is the key of a cost table. Two layers with equal signatures cost the same, so a
table measured once per signature prices every member of a space. Sizes are in channels and
pixels, bit-widths in bits (32 = float), ``batch`` in samples.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace

from supernet.layers import LAYER_KINDS, Layer, LayerShape, LayerSlot, layer_slots
from supernet.quant import FLOAT_BITS  # noqa: F401  (re-exported: costmodels' modules use it)
from supernet.space import SearchSpace

KINDS = LAYER_KINDS
_KEY = re.compile(
    r"^(?P<kind>[a-z]+)_i(?P<in_channels>\d+)_o(?P<out_channels>\d+)_k(?P<kernel>\d+)"
    r"_s(?P<stride>\d+)_r(?P<in_size>\d+)_w(?P<weight_bits>\d+)_a(?P<act_bits>\d+)"
    r"_b(?P<batch>\d+)(?P<noact>_noact)?(_g(?P<group>\d+))?$"
)


class SignatureError(ValueError):
    """A signature field or key that cannot describe a layer; the message names the field."""


class Batched:
    """A shape of the supernet run on ``batch`` samples (a dataclass field of the subclass):
    the shape's own checks, reported as `SignatureError`, then the batch's."""

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as e:
            raise SignatureError(str(e)) from None
        if int(self.batch) < 1:
            raise SignatureError(f"batch: must be a positive integer, got {self.batch!r}")


@dataclass(frozen=True, order=True)
class OpSignature(Batched, Layer):
    """One layer as the hardware sees it (the supernet's `Layer`), run on ``batch`` samples."""

    batch: int = 1

    @classmethod
    def from_shape(cls, shape: Layer, batch: int = 1) -> OpSignature:
        """The signature of a layer of the supernet run with ``batch`` samples."""
        return cls(**asdict(shape.layer()), batch=batch)

    @property
    def key(self) -> str:
        """A stable string key, e.g. ``conv_i16_o32_k3_s1_r28_w8_a8_b1`` (``_noact`` appended
        for a conv without activation, then ``_g2`` for a conv in 2 groups)."""
        key = (f"{self.kind}_i{self.in_channels}_o{self.out_channels}_k{self.kernel}"
               f"_s{self.stride}_r{self.in_size}_w{self.weight_bits}_a{self.act_bits}"
               f"_b{self.batch}")
        key += "_noact" if self.kind != "linear" and not self.activation else ""
        return key + (f"_g{self.group}" if self.group != 1 else "")

    @classmethod
    def parse(cls, key: str) -> OpSignature:
        """The signature a `key` was made from."""
        m = _KEY.match(key)
        if m is None:
            raise SignatureError(f"{key!r} is not a signature key; keys look like "
                                 "'conv_i16_o32_k3_s1_r28_w8_a8_b1' (optionally '_noact', "
                                 "then '_g2' for a grouped conv)")
        values = m.groupdict()
        noact, kind, group = values.pop("noact"), values.pop("kind"), values.pop("group")
        return cls(kind, **{k: int(v) for k, v in values.items()},
                   activation=kind != "linear" and noact is None, group=int(group or 1))

    def with_bits(self, weight_bits: int | None = None, act_bits: int | None = None
                  ) -> OpSignature:
        return replace(self, weight_bits=self.weight_bits if weight_bits is None else weight_bits,
                       act_bits=self.act_bits if act_bits is None else act_bits)

    def to_dict(self) -> dict[str, int | str | bool]:
        return asdict(self)

    def describe(self) -> str:
        """Human-readable, for error messages."""
        act = "" if self.kind == "linear" else (" +act" if self.activation else " no act")
        k = "" if self.kind == "linear" else f" k{self.kernel} s{self.stride}"
        k += f" in {self.group} groups" if self.group != 1 else ""
        return (f"{self.kind} {self.in_channels}->{self.out_channels}{k} on "
                f"{self.in_size}x{self.in_size}px, {self.weight_bits}-bit weights, "
                f"{self.act_bits}-bit activations, batch {self.batch}{act}")


SIGNATURE_FIELDS = tuple(f.name for f in fields(OpSignature))


def unique_keys(slot: LayerSlot) -> tuple[str, ...]:
    """A slot's shape keys without repeats (a later block's projection names its width twice)."""
    return tuple(dict.fromkeys(slot.shape_keys))


def slot_shapes(space: SearchSpace, slot: LayerSlot
                ) -> Iterator[tuple[tuple[int, ...], LayerShape]]:
    """Every ``(choice indices, shape)`` a slot takes, over the product of its keys' choices."""
    keys = unique_keys(slot)
    choices = [space.decision(k).choices for k in keys]
    for idx in itertools.product(*(range(len(c)) for c in choices)):
        values = {k: c[i] for k, c, i in zip(keys, choices, idx, strict=True)}
        yield idx, slot.build(values)


def enumerate_signatures(space: SearchSpace, batch: int = 1) -> set[OpSignature]:
    """Every signature any member of ``space`` can run, at ``batch`` samples."""
    return {OpSignature.from_shape(shape, batch)
            for slot in layer_slots(space) for _, shape in slot_shapes(space, slot)}


def space_fingerprint(space: SearchSpace) -> str:
    """A short hash of everything in a space that shapes its layers.

    Decisions, stages, stem, input, classes, activation and channel divisor; not the name, so a
    renamed copy of a space still matches its table.
    """
    desc = {
        "decisions": [[d.key, d.kind, list(d.choices)] for d in space.decisions],
        "stages": [_without_defaults(asdict(s), STAGE_DEFAULTS) for s in space.stages],
        "stem": asdict(space.stem),
        "input": [space.input_channels, space.input_size],
        "num_classes": space.num_classes,
        "act": space.act,
        "channel_divisor": space.channel_divisor,
    }
    # options added after tables were shipped count only when used, so old fingerprints hold
    if space.head_channels:
        desc["head"] = space.head_channels
    if space.first_block_residual:
        desc["first_block_residual"] = True
    text = json.dumps(desc, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


STAGE_DEFAULTS = {"per_block": False, "skip": False, "grouped": None}


def _without_defaults(d: dict, defaults: dict) -> dict:
    return {k: v for k, v in d.items() if k not in defaults or v != defaults[k]}
