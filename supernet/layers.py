"""The layers of the supernet, described analytically from the space alone (no weights).

Each `LayerSlot` is a layer position: the decisions that shape it and the conditions under which
it runs (its stage's depth and the exit). `describe_layers` lists the layers of one concrete
member — what `extract` builds — to count parameters; cost models enumerate a slot's shapes
over its decisions' choices and weigh it by the probability that it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from supernet.arch import ArchConfig, Number
from supernet.blocks import mid_channels
from supernet.quant import FLOAT_BITS
from supernet.space import SearchSpace


@dataclass(frozen=True)
class LayerShape:
    """One conv (kernel ≥ 1) or linear (kernel 0) layer of a concrete member; sizes in pixels."""

    name: str  # e.g. "stage2.block1.dw"
    kind: str  # "conv", "dwconv" or "linear"
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    in_size: int
    weight_bits: int = FLOAT_BITS
    act_bits: int = FLOAT_BITS
    batch_norm: bool = True
    activation: bool = True  # False for the linear projection convs and the classifiers

    @property
    def out_size(self) -> int:
        return -(-self.in_size // self.stride)  # "same" padding, odd kernels

    @property
    def weight_count(self) -> int:
        per_out = 1 if self.kind == "dwconv" else self.in_channels
        return self.out_channels * per_out * max(self.kernel, 1) ** 2

    @property
    def param_count(self) -> int:
        """Weights, plus BN scale and shift, plus a linear layer's bias."""
        extra = 2 * self.out_channels if self.batch_norm else 0
        bias = self.out_channels if self.kind == "linear" else 0
        return self.weight_count + extra + bias


@dataclass(frozen=True)
class LayerSlot:
    """A layer position: ``build(values)`` gives its shape from the values of ``shape_keys``;
    it runs when ``values[key] >= minimum`` for every ``(key, minimum)`` in ``runs_if``."""

    name: str
    shape_keys: tuple[str, ...]
    runs_if: tuple[tuple[str, int], ...]
    build: Callable[[Mapping[str, Number]], LayerShape]

    def runs(self, values: Mapping[str, Number]) -> bool:
        return all(values[k] >= m for k, m in self.runs_if)


def layer_slots(space: SearchSpace) -> list[LayerSlot]:
    """Every layer position of the supernet, in execution order."""
    stem = space.stem
    stem_layer = LayerShape("stem", "conv", space.input_channels, stem.channels, stem.kernel,
                            stem.stride, space.input_size)
    slots = [LayerSlot("stem", (), (), lambda v, s=stem_layer: s)]
    size = stem_layer.out_size
    for i, st in enumerate(space.stages, 1):
        p = f"stage{i}."
        bits_keys = (p + "wbits", p + "abits")
        in_src = space.stage_in_width(i)
        for j in range(st.depths[-1]):
            cin_key = in_src if j == 0 else p + "width"
            stride = st.stride if j == 0 else 1
            runs = ((p + "depth", j + 1), ("exit", i))
            mid_keys = tuple(k for k in (cin_key, p + "expand") if isinstance(k, str))
            for op, keys, out_size in (
                ("pw", mid_keys, size),
                ("dw", mid_keys + (p + "kernel",), size),
                ("pwl", mid_keys + (p + "width",), -(-size // stride)),
            ):
                slots.append(LayerSlot(
                    f"{p}block{j + 1}.{op}", keys + bits_keys, runs,
                    _block_layer_builder(space, f"{p}block{j + 1}.{op}", op, cin_key, p,
                                         stride, size if op != "pwl" else out_size),
                ))
            size = -(-size // stride)
        if i in space.exit_stages:
            slots.append(LayerSlot(
                f"exit{i}.fc", (p + "width",), (("exit", i),),
                lambda v, k=p + "width", n=f"exit{i}.fc", s=size: LayerShape(
                    n, "linear", int(v[k]), space.num_classes, 0, 1, s, batch_norm=False,
                    activation=False),
            ))
    return slots


def _block_layer_builder(space: SearchSpace, name: str, op: str, cin_key: str | int, p: str,
                         stride: int, in_size: int) -> Callable[[Mapping[str, Number]], LayerShape]:
    def build(v: Mapping[str, Number]) -> LayerShape:
        cin = int(v[cin_key]) if isinstance(cin_key, str) else cin_key
        mid = int(mid_channels(cin, v[p + "expand"], space.channel_divisor))
        bits = {"weight_bits": int(v[p + "wbits"]), "act_bits": int(v[p + "abits"])}
        if op == "pw":
            return LayerShape(name, "conv", cin, mid, 1, 1, in_size, **bits)
        if op == "dw":
            return LayerShape(name, "dwconv", mid, mid, int(v[p + "kernel"]), stride, in_size,
                              **bits)
        return LayerShape(name, "conv", mid, int(v[p + "width"]), 1, 1, in_size, **bits,
                          activation=False)

    return build


def describe_layers(space: SearchSpace, arch: ArchConfig) -> list[LayerShape]:
    """Every conv and linear layer that runs in member ``arch``, in execution order."""
    values = space.validate(arch)
    return [slot.build(values) for slot in layer_slots(space) if slot.runs(values)]


def count_params(space: SearchSpace, arch: ArchConfig) -> int:
    """Parameters of the extracted member (fake-quantizer steps are buffers, not counted)."""
    return sum(layer.param_count for layer in describe_layers(space, arch))
