"""The layers of the supernet, described analytically from the space alone (no weights).

Each `LayerSlot` is a layer position: the decisions that shape it and the conditions under which
it runs (its stage's depth and the exit). `describe_layers` lists the layers of one concrete
member — what `extract` builds — to count parameters; cost models enumerate a slot's shapes
over its decisions' choices and weigh it by the probability that it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

from timm.layers import create_act_layer
from torch import nn

from supernet.arch import ArchConfig, Number
from supernet.blocks import mid_channels
from supernet.groups import ChannelShuffle
from supernet.quant import FLOAT_BITS, FakeQuantAct, initial_step
from supernet.space import SearchSpace
from supernet.topology import BlockKeys, block_groups, value

LAYER_KINDS = ("conv", "dwconv", "linear")


@dataclass(frozen=True)
class Layer:
    """One conv (kernel ≥ 1) or linear (kernel 0) layer as the hardware sees it; sizes in
    channels and pixels, bit-widths in bits (32 = float).

    conv / dwconv: ``input quantizer (act_bits < 32) → conv → batch norm → activation``;
    ``activation`` is False for the projection (``pwl``) convs and 1x1 skip convs, which have
    none. ``group`` > 1: a grouped 1x1 conv (FBNet's grouped candidates); a grouped conv without
    activation (the projection) reads a channel-shuffled input.
    linear: ``global average pool over in_size × in_size → fully connected``; ``kernel`` is 0.
    The one description of a layer: `LayerShape` names it inside a member, a cost signature
    adds the batch, and `layer_module` builds it.
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    in_size: int
    weight_bits: int = FLOAT_BITS
    act_bits: int = FLOAT_BITS
    activation: bool = field(default=True, kw_only=True)
    group: int = field(default=1, kw_only=True)

    def __post_init__(self) -> None:
        if self.group != 1 and (self.kind != "conv" or self.group < 1
                                or self.in_channels % self.group
                                or self.out_channels % self.group):
            raise ValueError(f"group: a grouped layer is a conv whose {self.group} groups "
                             f"divide {self.in_channels} and {self.out_channels} channels")
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"kind: must be one of {LAYER_KINDS}, got {self.kind!r}")
        for f in ("in_channels", "out_channels", "stride", "in_size"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"{f}: must be a positive integer, got {getattr(self, f)!r}")
        for f in ("weight_bits", "act_bits"):
            if not 1 <= int(getattr(self, f)) <= FLOAT_BITS:
                raise ValueError(f"{f}: bit-widths lie in 1..32, got {getattr(self, f)!r}")
        if self.kind == "linear" and (self.kernel != 0 or self.activation):
            raise ValueError(f"a linear layer has kernel 0 and no activation, got "
                             f"kernel={self.kernel}, activation={self.activation}")
        if self.kind != "linear" and self.kernel < 1:
            raise ValueError(f"kernel: a {self.kind} needs kernel >= 1, got {self.kernel}")
        if self.kind == "dwconv" and self.in_channels != self.out_channels:
            raise ValueError(f"a dwconv has in_channels == out_channels, got "
                             f"{self.in_channels} and {self.out_channels}")

    @property
    def out_size(self) -> int:
        """Output height/width in pixels ("same" padding, odd kernels); 1 for a linear layer,
        which pools its input to 1×1."""
        return 1 if self.kind == "linear" else -(-self.in_size // self.stride)

    @property
    def groups(self) -> int:
        return self.in_channels if self.kind == "dwconv" else self.group

    @property
    def weight_count(self) -> int:
        """Weights of the conv or fully-connected matrix (no bias, no batch norm)."""
        return self.out_channels * (self.in_channels // self.groups) * max(self.kernel, 1) ** 2

    def layer(self) -> Layer:
        """Just the description (what any subclass adds dropped)."""
        return Layer(**{f.name: getattr(self, f.name) for f in fields(Layer)})


def layer_module(layer: Layer, act: str) -> nn.Module:
    """The layer as an extracted network runs it (eval mode); ``act`` is the space's activation
    name. Cost tables time exactly this."""
    mods: list[nn.Module] = []
    if layer.act_bits < FLOAT_BITS:
        mods.append(FakeQuantAct(initial_step(layer.act_bits), layer.act_bits))
    if layer.kind == "linear":
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                 nn.Linear(layer.in_channels, layer.out_channels)]
    else:
        if layer.group > 1 and not layer.activation:  # the shuffle between grouped convs
            mods.append(ChannelShuffle(layer.group))
        mods += [nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
                           layer.kernel // 2, groups=layer.groups, bias=False),
                 nn.BatchNorm2d(layer.out_channels)]
        if layer.activation:
            mods.append(create_act_layer(act))
    return nn.Sequential(*mods).eval()


@dataclass(frozen=True)
class LayerShape(Layer):
    """A layer of a concrete member, by name (e.g. ``stage2.block1.dw``)."""

    name: str = field(default="", kw_only=True)
    batch_norm: bool = field(default=True, kw_only=True)

    @property
    def param_count(self) -> int:
        """Weights, plus BN scale and shift, plus a linear layer's bias."""
        extra = 2 * self.out_channels if self.batch_norm else 0
        bias = self.out_channels if self.kind == "linear" else 0
        return self.weight_count + extra + bias


BLOCK_KINDS = ("block", "skip")


@dataclass(frozen=True)
class BlockShape:
    """A whole inverted-residual block as a block-level cost table prices it (input quantizer,
    1x1 expand, k×k depthwise with the stride, 1x1 project, the residual add if ``residual``;
    ``groups`` > 1: both 1x1 convs grouped, a channel shuffle between them). ``kind`` "skip"
    is a skip choice taken (expand and kernel 0): the identity when channels and size are
    kept, else a 1x1 conv with the stride and batch norm."""

    kind: str
    in_channels: int
    out_channels: int
    expand: Number
    kernel: int
    stride: int
    in_size: int
    weight_bits: int = FLOAT_BITS
    act_bits: int = FLOAT_BITS
    residual: bool = field(default=False, kw_only=True)
    groups: int = field(default=1, kw_only=True)

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"kind: a block is one of {BLOCK_KINDS}, got {self.kind!r}")
        for f in ("in_channels", "out_channels", "stride", "in_size", "groups"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"{f}: must be a positive integer, got {getattr(self, f)!r}")
        if self.kind == "skip" and (self.expand or self.kernel or self.residual
                                    or self.groups != 1):
            raise ValueError("a skip has expand and kernel 0, one group and no residual")
        if self.kind == "block" and (self.expand <= 0 or self.kernel < 1):
            raise ValueError(f"a block needs expand > 0 and kernel >= 1, got {self.expand}, "
                             f"{self.kernel}")

    @property
    def out_size(self) -> int:
        return -(-self.in_size // self.stride)

    @property
    def identity(self) -> bool:
        """A skip that keeps channels and size: nothing runs."""
        return (self.kind == "skip" and self.in_channels == self.out_channels
                and self.stride == 1)

    def block(self) -> BlockShape:
        """Just the description (what any subclass adds dropped)."""
        return BlockShape(**{f.name: getattr(self, f.name) for f in fields(BlockShape)})


Condition = tuple[str, float, float]  # (decision key, lowest, highest value) for a slot to run


def at_least(key: str, minimum: int) -> Condition:
    return key, minimum, math.inf


def holds(conditions: tuple[Condition, ...], values: Mapping[str, Number]) -> bool:
    """Whether every ``lo <= values[key] <= hi`` holds."""
    return all(lo <= values[k] <= hi for k, lo, hi in conditions)


@dataclass(frozen=True)
class LayerSlot:
    """A layer position: ``build(values)`` gives its shape from the values of ``shape_keys``;
    it runs when every condition of ``runs_if`` holds for its values."""

    name: str
    shape_keys: tuple[str, ...]
    runs_if: tuple[Condition, ...]
    build: Callable[[Mapping[str, Number]], LayerShape]

    def runs(self, values: Mapping[str, Number]) -> bool:
        return holds(self.runs_if, values)


def layer_slots(space: SearchSpace) -> list[LayerSlot]:
    """Every layer position of the supernet, in execution order."""
    stem = space.stem
    stem_layer = LayerShape("conv", space.input_channels, stem.channels, stem.kernel,
                            stem.stride, space.input_size, name="stem")
    slots = [LayerSlot("stem", (), (), lambda v, s=stem_layer: s)]
    sizes = block_in_sizes(space)
    size = stem_layer.out_size
    last = len(space.stages)
    for i in range(1, last + 1):
        for b in (b for b in space.blocks if b.stage == i):
            size = sizes[b.name]
            runs = (at_least(b.depth, b.index), at_least("exit", i))
            mid_keys = tuple(k for k in (b.in_width, b.expand) if isinstance(k, str))
            group_keys = (b.dense,) if b.dense else ()
            out_size = -(-size // b.stride)
            for op, keys in (("pw", mid_keys + group_keys), ("dw", mid_keys + (b.kernel,)),
                             ("pwl", mid_keys + (b.width,) + group_keys)):
                slots.append(LayerSlot(
                    f"{b.name}.{op}", keys + (b.wbits, b.abits),
                    runs + ((at_least(b.run, 1),) if b.run else ()),
                    _block_layer_builder(space, f"{b.name}.{op}", op, b,
                                         size if op != "pwl" else out_size),
                ))
            if b.skip_conv:
                keys = tuple(k for k in (b.in_width, b.width) if isinstance(k, str))
                slots.append(LayerSlot(
                    f"{b.name}.skip", keys + (b.wbits, b.abits), runs + ((b.run, 0, 0),),
                    _block_layer_builder(space, f"{b.name}.skip", "skip", b, size),
                ))
            size = out_size
        width: str | int = f"stage{i}.width"
        if i == last and space.head_channels:
            slots.append(LayerSlot(
                "head", (width,), (at_least("exit", i),),
                lambda v, k=width, s=size: LayerShape("conv", int(v[k]), space.head_channels,
                                                      1, 1, s, name="head"),
            ))
            width = space.head_channels
        if i in space.exit_stages:
            slots.append(LayerSlot(
                f"exit{i}.fc", (width,) if isinstance(width, str) else (), (at_least("exit", i),),
                lambda v, k=width, n=f"exit{i}.fc", s=size: LayerShape(
                    "linear", int(v[k]) if isinstance(k, str) else k, space.num_classes, 0, 1,
                    s, name=n, batch_norm=False, activation=False),
            ))
    return slots


def block_in_sizes(space: SearchSpace) -> dict[str, int]:
    """Input height = width (pixels) of every block, by block name."""
    size = -(-space.input_size // space.stem.stride)
    out = {}
    for b in space.blocks:
        out[b.name] = size
        size = -(-size // b.stride)
    return out


def _block_layer_builder(space: SearchSpace, name: str, op: str, b: BlockKeys, in_size: int
                         ) -> Callable[[Mapping[str, Number]], LayerShape]:
    def build(v: Mapping[str, Number]) -> LayerShape:
        cin = int(value(v, b.in_width))
        bits = {"weight_bits": int(v[b.wbits]), "act_bits": int(v[b.abits]), "name": name}
        if op == "skip":
            return LayerShape("conv", cin, int(v[b.width]), 1, b.stride, in_size, **bits,
                              activation=False)
        mid = int(mid_channels(cin, v[b.expand], space.channel_divisor))
        group = block_groups(b, v[b.dense], v[b.expand]) if b.dense and op != "dw" else 1
        if op == "pw":
            return LayerShape("conv", cin, mid, 1, 1, in_size, **bits, group=group)
        if op == "dw":
            return LayerShape("dwconv", mid, mid, int(v[b.kernel]), b.stride, in_size, **bits)
        return LayerShape("conv", mid, int(v[b.width]), 1, 1, in_size, **bits,
                          activation=False, group=group)

    return build


@dataclass(frozen=True)
class BlockSlot:
    """A block position priced whole: ``build(values)`` gives its `BlockShape` (a skip when its
    skip choice is taken); it runs under ``runs_if`` and stands for the layer slots ``layers``."""

    name: str
    shape_keys: tuple[str, ...]
    runs_if: tuple[Condition, ...]
    build: Callable[[Mapping[str, Number]], BlockShape]
    layers: tuple[str, ...]

    def runs(self, values: Mapping[str, Number]) -> bool:
        return holds(self.runs_if, values)


def block_slots(space: SearchSpace) -> list[BlockSlot]:
    """Every block position of the supernet, in execution order."""
    sizes = block_in_sizes(space)
    return [BlockSlot(b.name, b.keys + ((b.run,) if b.run else ()),
                      (at_least(b.depth, b.index), at_least("exit", b.stage)),
                      _block_builder(space, b, sizes[b.name]),
                      tuple(f"{b.name}.{op}" for op in ("pw", "dw", "pwl")
                            + (("skip",) if b.skip_conv else ())))
            for b in space.blocks]


def _block_builder(space: SearchSpace, b: BlockKeys, in_size: int
                   ) -> Callable[[Mapping[str, Number]], BlockShape]:
    def build(v: Mapping[str, Number]) -> BlockShape:
        cin = int(value(v, b.in_width))
        if b.run is not None and not int(v[b.run]):
            if not b.skip_conv:
                return BlockShape("skip", cin, cin, 0, 0, 1, in_size)
            return BlockShape("skip", cin, int(v[b.width]), 0, 0, b.stride, in_size,
                              int(v[b.wbits]), int(v[b.abits]))
        groups = block_groups(b, v[b.dense], v[b.expand]) if b.dense else 1
        return BlockShape("block", cin, int(v[b.width]), v[b.expand], int(v[b.kernel]),
                          b.stride, in_size, int(v[b.wbits]), int(v[b.abits]),
                          residual=b.residual, groups=groups)

    return build


def describe_layers(space: SearchSpace, arch: ArchConfig) -> list[LayerShape]:
    """Every conv and linear layer that runs in member ``arch``, in execution order."""
    values = space.validate(arch)
    return [slot.build(values) for slot in layer_slots(space) if slot.runs(values)]


def count_params(space: SearchSpace, arch: ArchConfig) -> int:
    """Parameters of the extracted member (fake-quantizer steps are buffers, not counted)."""
    return sum(layer.param_count for layer in describe_layers(space, arch))
