"""Integer members: QDQ graph, trained scales, folded batch norm, integer kernels, bytes."""

import copy
import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from deploy import LoweringError, fold_bn, lower_member, trained_weight_quant, write_member
from deploy.member_file import integer_ops, load_weight_quant, relower_member
from supernet import SuperNet, extract

SHAPE = (1, 16, 16)
BN_OF = {"conv_pw": "bn1", "conv_dw": "bn2", "conv_pwl": "bn3"}


def supernet_with_random_bn(space, seed: int = 0) -> SuperNet:
    """A supernet whose batch norms are far from identity, so folding them is tested."""
    torch.manual_seed(seed)
    net = SuperNet(space).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.5, 1.5)  # negative γ too: the fold flips integer signs
                m.bias.uniform_(-0.3, 0.3)
    return net


def member(space, bits: int, seed: int = 0):
    """A supernet with non-trivial batch norms, and its largest member at ``bits`` bits."""
    net = supernet_with_random_bn(space, seed)
    keys = {f"stage{i}__{k}": bits for i in (1, 2) for k in ("wbits", "abits")}
    config = space.largest().replace(**keys)
    static = extract(net, config).eval()
    return net, config, static


def session(model: onnx.ModelProto, optimized: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if optimized:
        opts.optimized_model_filepath = optimized
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def inputs(n=256, seed=1):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_bn_folding_is_exact_in_float():
    conv = torch.nn.Conv2d(6, 5, 3, padding=1, bias=False)
    bn = torch.nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(4, 6, 7, 7, dtype=torch.float64)
    w, b = fold_bn(conv.weight.double(), bn.double())
    with torch.no_grad():
        assert torch.allclose(F.conv2d(x, w, b, padding=1), bn(conv.double()(x)), atol=1e-12)


def test_float_lowering_equals_the_torch_member_without_activation_quantizers(tiny_space):
    _, _, static = member(tiny_space, 8)
    model = lower_member(static, {}, SHAPE, integer=False)
    plain = copy.deepcopy(static)
    for blk in (b for stage in plain.stages for b in stage):
        blk.quant_in = blk.quant_mid = blk.quant_dw = torch.nn.Identity()
    x = inputs(16)
    got = session(model).run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = plain(x)
    assert len(got) == len(want)
    assert max(np.abs(g - w.numpy()).max() for g, w in zip(got, want, strict=True)) < 1e-5


@pytest.mark.parametrize("bits", [8, 4])
def test_qdq_nodes_and_integer_initializers(tiny_space, bits):
    net, config, static = member(tiny_space, bits)
    wq = trained_weight_quant(net, static, config)
    assert len(wq) == 3 * sum(len(s) for s in static.stages)
    model = lower_member(static, wq, SHAPE)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    inits = initializers(model)
    qmax = 2 ** (bits - 1) - 1
    for name, q in wq.items():
        (ints,) = [v for k, v in inits.items() if k.startswith(f"{name}.weight_int")]
        assert ints.dtype == np.int8 and np.abs(ints).max() <= qmax
        # the integers are the trained ones, up to the sign a negative γ folds in
        weight = static.get_submodule(name).weight.detach()
        trained = torch.round(weight / q.scale.reshape(-1, 1, 1, 1))
        assert np.array_equal(np.abs(ints), trained.abs().numpy().astype(np.int8))
    float_weights = [v for v in inits.values() if v.dtype == np.float32 and v.ndim == 4
                     and v.shape[0] > 1 and v.size > 64]
    assert len(float_weights) == 1  # the stem only


def test_stored_scales_are_the_trained_ones_not_the_slices(tiny_space):
    net, config, static = member(tiny_space, 4)
    config = config.replace(stage1__width=8, stage1__kernel=3, stage1__expand=2)
    static = extract(net, config).eval()
    wq = trained_weight_quant(net, static, config)
    differs = 0
    for name, q in wq.items():
        i, j, conv = name.split(".")[1:]
        full = getattr(net.stages[int(i)].blocks[int(j)], conv).weight.detach()
        cout = static.get_submodule(name).out_channels
        expected = full.abs().flatten(1).amax(1)[:cout] / 7  # the whole supernet tensor
        assert torch.equal(q.scale, expected)
        sliced = static.get_submodule(name).weight.detach().abs().flatten(1).amax(1) / 7
        differs += int(not torch.allclose(sliced, expected))
    assert differs > 0  # a slice's own maximum is off the trained grid: why scales are stored
    model = lower_member(static, wq, SHAPE)
    inits = initializers(model)
    for name, q in wq.items():
        prefix, conv = name.rsplit(".", 1)
        bn = static.get_submodule(f"{prefix}.{BN_OF[conv]}")
        factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        ints = next(v for k, v in inits.items() if k.startswith(f"{name}.weight_int"))
        scale = (q.scale * factor.abs()).numpy()
        folded = ints.astype(np.float32) * scale.reshape(-1, 1, 1, 1)
        want = (static.get_submodule(name).weight.detach() * factor.reshape(-1, 1, 1, 1))
        assert np.allclose(folded, want.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [8, 4])
def test_onnxruntime_runs_integer_kernels_and_computes_the_torch_member(tiny_space, tmp_path,
                                                                        bits):
    net, config, static = member(tiny_space, bits)
    model = lower_member(static, trained_weight_quant(net, static, config), SHAPE)
    optimized = tmp_path / "optimized.onnx"
    s = session(model, str(optimized))
    ops = Counter(n.op_type for n in onnx.load(optimized).graph.node)
    blocks = sum(len(st) for st in static.stages)
    assert ops["ConvInteger"] == 3 * blocks and ops["Conv"] + ops["FusedConv"] == 1  # stem
    x = inputs()
    got = s.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = static(x)
    for g, w in zip(got, want, strict=True):  # the same model, up to float rounding
        assert (g.argmax(1) == w.numpy().argmax(1)).mean() >= 0.995
        assert np.abs(g - w.numpy()).max() < 1e-3 * np.abs(w.numpy()).max()


def test_qlinear_lowering_fuses_into_qlinearconv_with_a_rounded_bias(tiny_space, tmp_path):
    net, config, static = member(tiny_space, 8)
    model = lower_member(static, trained_weight_quant(net, static, config), SHAPE, qlinear=True)
    optimized = tmp_path / "optimized.onnx"
    s = session(model, str(optimized))
    ops = Counter(n.op_type for n in onnx.load(optimized).graph.node)
    blocks = sum(len(st) for st in static.stages)
    assert ops["QLinearConv"] == 2 * blocks  # expand and depthwise: conv → requantize
    assert ops["ConvInteger"] == blocks  # the projection, whose output stays float
    x = inputs()
    with torch.no_grad():
        want = static(x)[-1].numpy()
    got = s.run(None, {"input": x.numpy()})[-1]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95


def test_a_bit_width_the_target_cannot_run_names_layer_bits_and_fallback(tiny_space):
    net, config, static = member(tiny_space, 4)
    wq = trained_weight_quant(net, static, config)
    with pytest.raises(LoweringError, match=r"layer stages\.0\.0\.conv_pw: 4-bit weights "
                                            r"cannot execute.*fallback='float'"):
        lower_member(static, wq, SHAPE, supported_bits=(8,))
    model = lower_member(static, wq, SHAPE, supported_bits=(8,), fallback="float")
    assert not [k for k in initializers(model) if ".weight_int" in k]
    x = inputs(8)
    with torch.no_grad():
        want = static(x)[-1].numpy()
    got = session(model).run(None, {"input": x.numpy()})[-1]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75  # weights exact, activations int


def test_member_files_bytes_and_per_layer_table(tiny_space, tmp_path):
    net, config, static = member(tiny_space, 4)
    wq = trained_weight_quant(net, static, config)
    doc = write_member(tmp_path / "m", static, wq,
                       {"name": "m", "space": tiny_space.spec, "config": config.to_dict()}, SHAPE)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta == json.loads(json.dumps(doc))
    model = onnx.load(tmp_path / "m" / "model.onnx")
    payload = sum(v.nbytes for v in initializers(model).values())
    size = (tmp_path / "m" / "model.onnx").stat().st_size
    assert meta["weight_bytes"] == payload and meta["files"]["model.onnx"] == size
    assert 0 < size - payload < 16_000  # the rest is the graph: names, shapes, attributes
    rows = {r["name"]: r for r in meta["layers"]}
    assert set(wq) < set(rows) and {"stem", "exit1.fc"} <= set(rows)
    for name in wq:
        conv = static.get_submodule(name)
        assert rows[name]["weight_bits"] == 4 and rows[name]["act_bits"] == 4
        assert rows[name]["weight_bytes"] >= conv.weight.numel()  # one int8 per weight
        assert rows[name]["weight_bytes"] < 4 * conv.weight.numel() + 20 * conv.out_channels
    assert rows["stem"]["weight_bits"] == 32
    assert sum(r["weight_bytes"] for r in rows.values()) <= meta["weight_bytes"]
    stored = load_weight_quant(tmp_path / "m")
    assert all(torch.equal(stored[k].scale, q.scale) for k, q in wq.items())
    assert meta["onnx"]["integer_ops"] == integer_ops(tmp_path / "m" / "model.onnx")
    assert meta["onnx"]["integer_ops"]["ConvInteger"] == len(wq)
    # the files alone are enough to lower the member again
    assert json.loads(json.dumps(relower_member(tmp_path / "m"))) == meta


def test_a_weight_only_member_asks_onnxruntime_to_fold_its_int8_weights(tiny_space, tmp_path):
    net, config, _ = member(tiny_space, 8)
    config = config.replace(stage1__abits=32, stage2__abits=32)
    static = extract(net, config).eval()
    doc = write_member(tmp_path / "m", static, trained_weight_quant(net, static, config), {},
                       SHAPE)
    assert doc["onnx"]["integer_ops"] == {}  # float activations: no integer kernel applies
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for key, value in doc["onnx"]["session_config"].items():
        opts.add_session_config_entry(key, value)
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "m" / "model.onnx"), opts,
                         providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    assert ops["DequantizeLinear"] == 0  # folded once at load, not run per inference
    ints = [t for t in onnx.load(tmp_path / "m" / "model.onnx").graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and ".weight_int" in t.name]
    assert len(ints) == 3 * sum(len(s) for s in static.stages)  # the file still ships int8
