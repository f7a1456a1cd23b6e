"""Lowering an extracted member to ONNX: an integer QDQ model, or the same graph in float.

Integer graph (standard QDQ, which onnxruntime fuses into integer kernels): every quantized
conv's weights are int8 initializers with the trained per-output-channel scales (batch norm
folded into the scale and a bias; the integers stay the trained ones), activations pass through
QuantizeLinear with their learned LSQ step. A conv on quantized activations is a
``ConvInteger`` (u8 × s8 → int32) whose result is scaled and biased in float, so the model
computes what the fake-quantized one does; ``qlinear=True`` instead lets onnxruntime fuse
DQ → Conv → Q into ``QLinearConv`` at the cost of an int32 bias rounded to the accumulator grid.
ReLU/ReLU6 before a quantizer is a clip on the quantizer's grid, which is exact.
4-bit weights are stored as int8 holding values in ±7 (and 4-bit activations as uint8 in
[120, 135], zero point 128): onnxruntime 1.32 reads INT4 tensors (opset 21) but runs
convolutions on them in float, not integer kernels.
Grouped 1x1 convs (FBNet's grouped candidates) are ``ConvInteger`` / ``Conv`` nodes with
``group``; the channel shuffle before a grouped projection is Reshape (N, g, C/g, H·W) →
Transpose → Reshape, on the uint8 codes where the activation is quantized (it only moves
values), else on float.
32-bit layers, the stem, the head conv and the exit heads are float; a skipped block lowers to
nothing when it is the identity, and where the identity does not fit (a `StaticSkipConv`) to its
input quantizer → 1x1 conv with the stride and folded batch norm, no activation, no residual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from deploy.quant_params import (
    HEAD_CONV,
    SKIP_CONV,
    LoweringError,
    WeightQuant,
    fold_bn,
    head_conv,
)
from supernet.blocks import StaticSkipConv
from supernet.extract import StaticNet
from supernet.quant import FLOAT_BITS, FakeQuantAct

ONNX_OPSET = 17
INTEGER_BITS = tuple(range(2, 9))  # what int8 storage and onnxruntime's int8 kernels execute
# activations as uint8 with zero point 128: the same signed grid (q + 128), and the u8 × s8
# products x86 integer kernels are fast at
ACT_ZERO = np.uint8(128)
ACT_RANGE = {nn.ReLU6: (0.0, 6.0), nn.ReLU: (0.0, float("inf"))}


class _Graph:
    """Nodes and initializers of the graph being built, with unique names."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), n))
        return n

    def op(self, op: str, inputs: Sequence[str], hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out


def _np(t: torch.Tensor, dtype=np.float32) -> np.ndarray:
    return t.detach().cpu().numpy().astype(dtype)


def _act_bounds(act: nn.Module) -> tuple[float, float]:
    for kind, bounds in ACT_RANGE.items():
        if isinstance(act, kind):
            return bounds
    raise LoweringError(f"activation {type(act).__name__}: only ReLU and ReLU6 lower to "
                        "integer ONNX; use a space with act: relu6 or relu")


class _Lowering:
    def __init__(self, weight_quant: Mapping[str, WeightQuant], integer: bool, qlinear: bool):
        self.g, self.wq, self.integer, self.qlinear = _Graph(), weight_quant, integer, qlinear

    # -- activations ---------------------------------------------------------------------------
    def quantize(self, x: str, fq: nn.Module, lo: float = -np.inf, hi: float = np.inf):
        """``x`` (float) → clip to the quantizer's range (and [lo, hi]) → int8; returns
        ``(int8 name, scale name, step)`` or ``(x, None, None)`` for a float activation."""
        if not (self.integer and isinstance(fq, FakeQuantAct)):
            return self.clip(x, lo, hi), None, None
        step = torch.tensor(float(fq.step), dtype=torch.float32)
        qn, qp = 2 ** (fq.bits - 1), 2 ** (fq.bits - 1) - 1
        lo_q = -qn if lo == -np.inf else int(torch.round(torch.tensor(lo, dtype=torch.float32) / step))
        hi_q = qp if hi == np.inf else int(torch.round(torch.tensor(hi, dtype=torch.float32) / step))
        lo_q, hi_q = max(lo_q, -qn), min(hi_q, qp)
        g = self.g
        s, zp = g.const("act_scale", _np(step)), g.const("act_zero", ACT_ZERO)
        x = g.op("Clip", [x, g.const("lo", _np(lo_q * step)), g.const("hi", _np(hi_q * step))],
                 "clip")
        return g.op("QuantizeLinear", [x, s, zp], "q"), s, float(step)

    def clip(self, x: str, lo: float, hi: float) -> str:
        if lo == -np.inf and hi == np.inf:
            return x
        if hi == np.inf and lo == 0.0:
            return self.g.op("Relu", [x], "relu")
        return self.g.op("Clip", [x, self.g.const("lo", np.float32(lo)),
                                  self.g.const("hi", np.float32(hi))], "clip")

    def dequantize(self, q: str, s: str) -> str:
        return self.g.op("DequantizeLinear", [q, s, self.g.const("act_zero", ACT_ZERO)], "dq")

    # -- convolutions --------------------------------------------------------------------------
    def conv(self, x, name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, *, requant: nn.Module
             | None = None, act_bounds=(-np.inf, np.inf)):
        """Conv + folded BN on ``x`` (a float name, or ``(int8, scale, step)``); then the
        activation clip and, when ``requant`` is a quantizer, its int8 output."""
        g, wq = self.g, self.wq.get(name) if self.integer else None
        q_in = x if isinstance(x, tuple) and x[1] is not None else None
        x_float = self.dequantize(q_in[0], q_in[1]) if q_in else (x[0] if isinstance(x, tuple)
                                                                  else x)
        attrs = {"group": conv.groups, "kernel_shape": list(conv.kernel_size),
                 "pads": [conv.padding[0]] * 2 + [conv.padding[1]] * 2,
                 "strides": list(conv.stride)}
        if wq is None:  # float weights (32-bit layer, stem, or the float lowering)
            w, b = fold_bn(conv.weight, bn)
            y = g.op("Conv", [x_float, g.const(f"{name}.weight", _np(w)),
                              g.const(f"{name}.bias", _np(b))], "conv", **attrs)
            return self.quantize(y, requant, *act_bounds) if requant is not None else \
                self.clip(y, *act_bounds)
        ints = wq.integers(conv.weight.detach().cpu(), name)
        factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().cpu()
        sign = torch.where(factor < 0, -1, 1).to(torch.int8)
        ints = ints * sign.reshape(-1, 1, 1, 1)  # |q| <= 2**(bits-1)-1: the flip cannot overflow
        w_scale = (wq.scale * factor.abs()).float()  # BN folded into the trained scale
        bias = (bn.bias - bn.running_mean * factor).detach().cpu().float()
        w_name = g.const(f"{name}.weight_int{wq.bits}", _np(ints, np.int8))
        if q_in is not None and (requant is None or not self.qlinear):
            # ConvInteger (int8 × int8 → int32), then scale and bias in float: exact up to float
            # rounding, so the integer model agrees with the fake-quantized one
            acc = g.op("ConvInteger", [q_in[0], w_name, g.const("act_zero", ACT_ZERO),
                                       g.const("zero", np.int8(0))], "convint", **attrs)
            y = g.op("Cast", [acc], "cast", to=TensorProto.FLOAT)
            rescale = (w_scale * torch.tensor(q_in[2], dtype=torch.float32)).reshape(1, -1, 1, 1)
            y = g.op("Mul", [y, g.const(f"{name}.rescale", _np(rescale))], "mul")
            y = g.op("Add", [y, g.const(f"{name}.bias", _np(bias.reshape(1, -1, 1, 1)))], "add")
            return self.quantize(y, requant, *act_bounds) if requant is not None else \
                self.clip(y, *act_bounds)
        w_s = g.const(f"{name}.weight_scale", _np(w_scale))
        w_zp = g.const(f"{name}.weight_zero", np.zeros(len(w_scale), np.int8))
        w = g.op("DequantizeLinear", [w_name, w_s, w_zp], "dqw", axis=0)
        inputs = [x_float, w]
        if q_in is not None:  # int32 bias on the accumulator's grid, as QLinearConv takes it
            b_scale = (w_scale * torch.tensor(q_in[2], dtype=torch.float32)).float()
            b_int = torch.round(bias / b_scale).to(torch.int64)
            b_int = b_int.clamp(-(2 ** 31), 2 ** 31 - 1)
            b = g.op("DequantizeLinear", [g.const(f"{name}.bias_int32", _np(b_int, np.int32)),
                                          g.const(f"{name}.bias_scale", _np(b_scale)),
                                          g.const(f"{name}.bias_zero", np.zeros(len(b_scale), np.int32))],
                     "dqb", axis=0)
        else:
            b = g.const(f"{name}.bias", _np(bias))
        y = g.op("Conv", [*inputs, b], "conv", **attrs)
        if requant is None or not isinstance(requant, FakeQuantAct):
            return self.quantize(y, requant, *act_bounds) if requant is not None else \
                self.clip(y, *act_bounds)
        # Conv → Q → DQ fuses into QLinearConv; the clip then runs on exact grid values
        s = g.const("act_scale", _np(torch.tensor(float(requant.step))))
        y = self.dequantize(g.op("QuantizeLinear", [y, s, g.const("act_zero", ACT_ZERO)], "q"),
                            s)
        return self.quantize(y, requant, *act_bounds)

    # -- the network ---------------------------------------------------------------------------
    def block(self, x: str, blk: nn.Module, prefix: str) -> str:
        if isinstance(blk, nn.Identity):  # a skipped block: nothing to compute
            return x
        if isinstance(blk, StaticSkipConv):  # quant → 1x1 conv with the stride → BN, no act
            return self.conv(self.quantize(x, blk.quant_in), f"{prefix}.{SKIP_CONV}", blk.conv,
                             blk.bn)
        bounds = _act_bounds(blk.act)
        h = self.quantize(x, blk.quant_in)
        h = self.conv(h, f"{prefix}.conv_pw", blk.conv_pw, blk.bn1, requant=blk.quant_mid,
                      act_bounds=bounds)
        h = self.conv(h, f"{prefix}.conv_dw", blk.conv_dw, blk.bn2, requant=blk.quant_dw,
                      act_bounds=bounds)
        h = self.shuffle(h, blk.shuffle, blk.conv_pwl.in_channels, prefix)
        y = self.conv(h, f"{prefix}.conv_pwl", blk.conv_pwl, blk.bn3)
        return self.g.op("Add", [x, y], "residual") if blk.residual else y

    def shuffle(self, h: tuple, shuffle: nn.Module, channels: int, prefix: str) -> tuple:
        """``nn.ChannelShuffle(g)`` on ``h`` (``(tensor, scale, step)``, the tensor uint8 or
        float, ``channels`` wide): Reshape to (N, g, C/g, H·W) → Transpose to (N, C/g, g, H·W)
        → Reshape back to the input's shape. It only moves values, so it runs on the quantized
        tensor as it is."""
        if isinstance(shuffle, nn.Identity):
            return h
        if not isinstance(shuffle, nn.ChannelShuffle):
            raise LoweringError(f"{prefix}.shuffle: {type(shuffle).__name__} does not lower to "
                                "ONNX; only nn.ChannelShuffle and nn.Identity do")
        g, x, groups = self.g, h[0], int(shuffle.groups)
        split = g.const(f"{prefix}.shuffle.shape",
                        np.array([0, groups, channels // groups, -1], np.int64))
        y = g.op("Transpose", [g.op("Reshape", [x, split], "split")], "shuffle",
                 perm=[0, 2, 1, 3])
        return (g.op("Reshape", [y, g.op("Shape", [x], "shape")], "unshuffle"), *h[1:])

    def head(self, x: str, head: nn.Sequential, name: str) -> str:
        """[head conv →] global average pool → fc; the head conv is float, like the stem."""
        g, pre = self.g, head_conv(head)
        if pre is not None:
            conv, bn, act = pre
            x = self.conv(x, HEAD_CONV, conv, bn, act_bounds=_act_bounds(act))
        fc = head[-1]
        h = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "flatten", axis=1)
        return g.op("Gemm", [h, g.const(f"{name}.weight", _np(fc.weight)),
                             g.const(f"{name}.bias", _np(fc.bias))], "fc", transB=1)


@torch.no_grad()
def lower_member(static: StaticNet, weight_quant: Mapping[str, WeightQuant],
                 input_shape: Sequence[int], *, integer: bool = True,
                 supported_bits: Sequence[int] = INTEGER_BITS,
                 fallback: str | None = None, qlinear: bool = False) -> onnx.ModelProto:
    """``static`` (eval mode) as an ONNX model with a dynamic batch: input ``input``, one output
    ``exit<stage>`` per exit. ``weight_quant`` (module name → `WeightQuant`) gives each
    quantized conv's trained scales; ``integer=False`` gives the same graph in float.
    A weight bit-width outside ``supported_bits`` is an error unless ``fallback="float"``,
    which ships that layer with float weights. ``qlinear=True`` ends each conv that feeds an
    activation quantizer in QuantizeLinear with an int32 bias, which onnxruntime fuses into
    ``QLinearConv``; the bias then rounds to the accumulator's grid (scale × scale), a visible
    error at 4-bit inputs, so the default is ``ConvInteger`` with a float bias."""
    static = static.eval().cpu()
    wq = dict(weight_quant)
    for name, q in list(wq.items()):
        if q.bits not in supported_bits:
            if fallback != "float":
                raise LoweringError(
                    f"layer {name}: {q.bits}-bit weights cannot execute on this target "
                    f"(integer bit-widths {sorted(supported_bits)}); fall back to float for "
                    f"that layer with fallback='float' (hwnas export --onnx-fallback float), or "
                    f"export a member whose wbits are in {sorted(supported_bits)} or "
                    f"{FLOAT_BITS}")
            del wq[name]
    low = _Lowering(wq, integer, qlinear)
    stem_conv, stem_bn, stem_act = static.stem
    x = low.conv("input", "stem", stem_conv, stem_bn, act_bounds=_act_bounds(stem_act))
    outputs = []
    for i, stage in enumerate(static.stages, 1):
        for j, blk in enumerate(stage):
            x = low.block(x, blk, f"stages.{i - 1}.{j}")
        if i in static.exit_stages:
            outputs.append((f"exit{i}", low.head(x, static.heads[str(i)], f"exit{i}.fc")))
    g = low.g
    for out_name, node_out in outputs:
        g.nodes.append(helper.make_node("Identity", [node_out], [out_name], name=out_name))
    c, h, w = input_shape
    graph = helper.make_graph(
        g.nodes, "hwnas_member",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", c, h, w])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", None])
         for n, _ in outputs], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="hwnas")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes the model's initializers (weights, scales, biases) take in the file."""
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
