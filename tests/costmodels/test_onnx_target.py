"""The onnxruntime target prices layers as the exported integer model runs them."""

from collections import Counter

import pytest

from costmodels import OpSignature, build_measured_table
from costmodels import onnx_target as ox
from costmodels.targets import Target, op_module
from supernet import ArchConfig, SuperNet, extract
from supernet.layers import describe_layers


def with_bits(space, wbits: int, abits: int) -> ArchConfig:
    values = space.largest().to_dict()
    return ArchConfig.from_dict({k: wbits if k.endswith("wbits") else abits
                                 if k.endswith("abits") else v for k, v in values.items()})


@pytest.fixture(scope="module")
def ort_table(tiny):
    return build_measured_table(tiny, "onnxruntime", warmup=1, repeats=5, progress=False,
                                clock="thread")


def test_integer_and_float_entries_differ(ort_table):
    shape = OpSignature("conv", 8, 32, 1, 1, 8)  # a stage-1 expansion of the tiny space
    int8 = ort_table.lookup(shape.with_bits(8, 8), "latency_ms")
    assert int8 != ort_table.lookup(shape, "latency_ms")
    # 4 bits run the int8 kernel; one float operand means a float kernel
    assert ort_table.lookup(shape.with_bits(4, 4), "latency_ms") == int8
    assert ort_table.lookup(shape.with_bits(8, 32), "latency_ms") == \
        ort_table.lookup(shape, "latency_ms")
    assert ort_table.meta.target == "onnxruntime" and ort_table.meta.host["onnxruntime"]
    assert "int8" in ort_table.meta.notes


def test_layers_lower_to_integer_kernels_only_when_both_operands_are_quantized():
    sig = OpSignature("dwconv", 16, 16, 3, 1, 8, 8, 8)
    assert "QLinearConv" in ox.kernels(ox.lower_layer(op_module(sig, "relu6"), sig))
    for w, a in ((32, 32), (8, 32), (32, 8)):
        s = sig.with_bits(w, a)
        ops = ox.kernels(ox.lower_layer(op_module(s, "relu6"), s))
        assert "QLinearConv" not in ops and "Conv" in ops, (w, a)


def test_an_integer_member_runs_an_integer_chain(tiny):
    net = SuperNet(tiny).eval()
    arch = with_bits(tiny, 8, 8)
    layers = describe_layers(tiny, arch)
    ops = Counter(ox.kernels(ox.lower_member(extract(net, arch), layers, (1, 1, 16, 16))))
    block_convs = sum(1 for layer in layers if layer.name.startswith("stage"))
    assert ops["QLinearConv"] == block_convs and ops["QuantizeLinear"] <= 2
    float_arch = with_bits(tiny, 32, 32)
    float_ops = Counter(ox.kernels(ox.lower_member(
        extract(net, float_arch), describe_layers(tiny, float_arch), (1, 1, 16, 16))))
    assert "QLinearConv" not in float_ops
    call = Target("onnxruntime").network(extract(net, arch), layers, (1, 1, 16, 16))
    assert [out.shape for out in call()] == [(1, tiny.num_classes)] * len(tiny.exit_stages)


def test_grouped_convs_and_their_shuffle_export_and_run_as_grouped_kernels():
    """A grouped projection conv reads a channel-shuffled input; both lower to ONNX and the
    lowered model computes the torch layer."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    sig = OpSignature("conv", 16, 24, 1, 1, 8, 32, 32, activation=False, group=2)
    module = op_module(sig, "relu")
    data = ox.lower_layer(module, sig)
    model = onnx.load_from_string(data)
    assert Counter(n.op_type for n in model.graph.node)["Transpose"] == 1
    assert [a.i for n in model.graph.node if n.op_type == "Conv"
            for a in n.attribute if a.name == "group"] == [2]
    x = torch.randn(1, 16, 8, 8)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-4, atol=1e-5)
