"""The onnxruntime target: time layers and members as they run once exported as integer models.

Lowering (one rule for a table's layers and for whole members, so they agree):
- fake quantizers are dropped and the float network is exported to ONNX (TorchScript exporter,
  batch norm folded into the conv);
- a conv / linear layer whose weights *and* input activations are quantized (bits < 32) becomes
  QDQ int8 with onnxruntime's own quantizer (`quantize_static`, per-channel symmetric int8
  weights, uint8 activations with a zero point: the U8S8 form onnxruntime's x86 kernels
  favour, and the one in which it folds ReLU6 into the requantization), which onnxruntime's
  CPU provider fuses into integer kernels (QLinearConv, QLinearAdd, QGemm) — the activations,
  adds and pools between integer layers are quantized too, so the chain stays integer. onnxruntime 1.32 has no 4-bit conv or gemm kernels on CPU
  (its int4 support is weight-only MatMulNBits), so a 4-bit layer is lowered and timed as the
  int8 kernel that would run it (4-bit values stored in int8): on this target 4 and 8 bits cost
  the same, and both differ from float;
- a layer with only its weights or only its activations quantized runs float kernels (weights
  dequantized once at load): onnxruntime has no kernel that mixes int8 and float operands.
Each timed call is one ``InferenceSession.run`` with ``threads`` intra-op threads.
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from costmodels.signature import FLOAT_BITS, OpSignature
from supernet.layers import LayerShape
from supernet.quant import FakeQuantAct

OPSET = 17
INT_BITS = 8  # the kernel every quantized layer runs (see the module docstring)


def integer_kernel(sig: OpSignature | LayerShape) -> bool:
    """Whether the layer runs an integer kernel: both operands quantized."""
    return sig.weight_bits < FLOAT_BITS and sig.act_bits < FLOAT_BITS


def runtime_signature(sig: OpSignature) -> OpSignature:
    """The signature with what the lowering erases erased: int8 kernel or float."""
    bits = INT_BITS if integer_kernel(sig) else FLOAT_BITS
    return replace(sig, weight_bits=bits, act_bits=bits)


def float_copy(module: nn.Module) -> nn.Module:
    """A deep copy without fake activation quantizers (the lowering inserts real Q/DQ)."""
    module = copy.deepcopy(module).cpu().eval()
    for child in list(module.modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, FakeQuantAct):
                setattr(child, attr, nn.Identity())
    return module


def export_float(module: nn.Module, input_shape: Sequence[int]) -> bytes:
    """``module`` (float, eval) as an ONNX model with a fixed input shape; input ``"input"``."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is legacy
        torch.onnx.export(float_copy(module), (torch.zeros(*input_shape),), buf,
                          input_names=["input"], opset_version=OPSET, dynamo=False)
    return _inline_shared_initializers(buf.getvalue())


def _inline_shared_initializers(model_bytes: bytes) -> bytes:
    """Replace ``Identity(initializer)`` nodes — the exporter's way of sharing equal constants,
    e.g. the zero biases of untrained batch norms — by copies of the initializer, so every
    conv reads its own constants and the quantizer can quantize it."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy_ = onnx.TensorProto()
        copy_.CopyFrom(inits[node.input[0]])
        copy_.name = node.output[0]
        graph.initializer.append(copy_)
        graph.node.remove(node)
    return model.SerializeToString()


def compute_nodes(model_bytes: bytes) -> list[str]:
    """Names of the Conv and Gemm nodes in graph order (= the layers' execution order)."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def quantize(model_bytes: bytes, input_shape: Sequence[int], float_nodes: Sequence[str],
             seed: int = 0) -> bytes:
    """QDQ int8 with onnxruntime's quantizer (min-max on two random inputs), everywhere but
    ``float_nodes`` (the conv / gemm nodes of float layers): activations, adds and pools
    between integer layers stay integer, as onnxruntime needs to fuse them."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    rng = np.random.default_rng(seed)
    samples = [{"input": rng.standard_normal(tuple(input_shape)).astype(np.float32)}
               for _ in range(2)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory(prefix="hwnas-ort-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        src.write_bytes(model_bytes)
        import logging

        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice
        try:
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=list(float_nodes),
                            extra_options={"WeightSymmetric": True},
                            calibration_providers=["CPUExecutionProvider"])
        finally:
            logging.getLogger().setLevel(level)
        return dst.read_bytes()


def lower_member(module: nn.Module, layers: Sequence[LayerShape], input_shape: Sequence[int]
                 ) -> bytes:
    """An extracted member as ONNX, its integer layers (``layers``, execution order) in QDQ."""
    model = export_float(module, input_shape)
    nodes = compute_nodes(model)
    if len(nodes) != len(layers):
        raise RuntimeError(f"ONNX export has {len(nodes)} conv/gemm nodes but the member has "
                           f"{len(layers)} layers; the lowering cannot pair them")
    if not any(integer_kernel(layer) for layer in layers):
        return model
    return quantize(model, input_shape, [n for n, layer in zip(nodes, layers, strict=True)
                                         if not integer_kernel(layer)])


def lower_layer(module: nn.Module, sig: OpSignature) -> bytes:
    """One layer (`profile.op_module`) as ONNX, QDQ int8 when it runs an integer kernel."""
    shape = (sig.batch, sig.in_channels, sig.in_size, sig.in_size)
    model = export_float(module, shape)
    return quantize(model, shape, []) if integer_kernel(sig) else model


PREFIX_CHANNELS = 8


def prefix_key(sig: OpSignature) -> tuple[int, int, int, bool]:
    """What a layer's prefix depends on: its input tensor and its kernel kind."""
    return (sig.batch, sig.in_channels, sig.in_size, integer_kernel(sig))


def prefix_module(sig: OpSignature) -> nn.Module:
    """A 1×1 conv + batch norm that makes ``sig``'s input from ``PREFIX_CHANNELS`` channels."""
    return nn.Sequential(nn.Conv2d(PREFIX_CHANNELS, sig.in_channels, 1, bias=False),
                         nn.BatchNorm2d(sig.in_channels)).eval()


def lower_chain(modules: Sequence[nn.Module], sig: OpSignature) -> bytes:
    """``modules`` in sequence on a ``PREFIX_CHANNELS``-channel input, all lowered like
    ``sig`` (QDQ int8 throughout when it runs an integer kernel, else float).

    A layer timed after a prefix, minus the prefix alone, is the layer as it runs inside a
    chain: its input arrives already quantized and in the kernel's layout, so it pays no
    quantize / layout change on the way in. What it pays on the way out (dequantize, layout
    back) the next layer's difference takes off again: summed along a network, the ends
    telescope to the network's own input and output conversions.
    """
    shape = (sig.batch, PREFIX_CHANNELS, sig.in_size, sig.in_size)
    model = export_float(nn.Sequential(*modules), shape)
    return quantize(model, shape, []) if integer_kernel(sig) else model


def identity_model(input_shape: Sequence[int]) -> bytes:
    """A graph that only returns its input: what a run costs beyond its layers."""
    import onnx
    from onnx import TensorProto, helper

    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(input_shape))
           for n in ("input", "output")]
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])],
                              "overhead", [io_[0]], [io_[1]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def session_call(model_bytes: bytes, input_shape: Sequence[int], threads: int = 1,
                 seed: int = 0) -> Callable[[], object]:
    """A zero-argument call that runs the model once on a fixed random input (CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).standard_normal(tuple(input_shape)).astype(np.float32)
    feed = {"input": x}
    return lambda: session.run(None, feed)


def kernels(model_bytes: bytes) -> list[str]:
    """The op types onnxruntime runs after its graph optimizations (to see what fused)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="hwnas-ort-") as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
