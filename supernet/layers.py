"""The layer list of a concrete member, computed from the space alone (no weights).

It is the analytic description of what `extract` builds — each conv and linear layer with its
shape, stride, input size and bits — used to count parameters and to enumerate cost signatures.
"""

from __future__ import annotations

from dataclasses import dataclass

from supernet.arch import ArchConfig
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


def describe_layers(space: SearchSpace, arch: ArchConfig) -> list[LayerShape]:
    """Every conv and linear layer that runs in member ``arch``, in execution order."""
    a = space.validate(arch)
    stem = space.stem
    layers = [LayerShape("stem", "conv", space.input_channels, stem.channels, stem.kernel,
                         stem.stride, space.input_size)]
    size, cin = layers[0].out_size, stem.channels
    for i in range(1, int(a["exit"]) + 1):
        p = f"stage{i}."
        st = space.stages[i - 1]
        width, k = int(a[p + "width"]), int(a[p + "kernel"])
        bits = {"weight_bits": int(a[p + "wbits"]), "act_bits": int(a[p + "abits"])}
        for j in range(int(a[p + "depth"])):
            mid = int(mid_channels(cin, a[p + "expand"], space.channel_divisor))
            stride = st.stride if j == 0 else 1
            name = f"{p}block{j + 1}."
            layers += [
                LayerShape(name + "pw", "conv", cin, mid, 1, 1, size, **bits),
                LayerShape(name + "dw", "dwconv", mid, mid, k, stride, size, **bits),
            ]
            size = layers[-1].out_size
            layers.append(LayerShape(name + "pwl", "conv", mid, width, 1, 1, size, **bits))
            cin = width
        if i in space.exit_stages:
            layers.append(LayerShape(f"exit{i}.fc", "linear", width, space.num_classes, 0, 1,
                                     size, batch_norm=False))
    return layers


def count_params(space: SearchSpace, arch: ArchConfig) -> int:
    """Parameters of the extracted member (fake-quantizer steps are buffers, not counted)."""
    return sum(layer.param_count for layer in describe_layers(space, arch))
