"""Integer lowering of FBNet-shaped members: skipped blocks, residual first blocks, a head conv."""

import copy
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import numpy_helper

from costmodels.analytic import weight_bytes
from costmodels.signature import OpSignature
from deploy import lower_member, trained_weight_quant, write_member
from deploy.member_file import relower_member
from supernet import SearchSpace, extract
from supernet.layers import describe_layers
from tests.deploy.test_onnx_qdq import session, supernet_with_random_bn

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (3, 16, 16)
# (sample seed, bits, decisions forced on top of the sample): each case says what it covers
CASES = {
    "skip+head-8bit": (0, 8, {"exit": 3, "stage1__block2__run": 0, "stage2__block2__run": 1}),
    "skipped-residual-first-block+head-4bit": (1, 4, {"exit": 3, "stage1__block1__run": 0}),
    "skips-exit2-8bit": (2, 8, {"exit": 2, "stage1__block1__run": 0,
                                "stage2__block2__run": 0}),
    "no-skip+head-8bit": (3, 8, {"exit": 3, "stage1__block1__run": 1, "stage1__block2__run": 1,
                                 "stage2__block2__run": 1}),
}


@pytest.fixture(scope="module")
def fbnet() -> SearchSpace:
    """fbnet_tiny with quantized bit-width choices (the file itself searches float only)."""
    spec = yaml.safe_load((ROOT / "configs/spaces/fbnet_tiny.yaml").read_text())
    return SearchSpace({**spec, "weight_bits": [4, 8, 32], "act_bits": [4, 8, 32]})


def member(space, case):
    """A supernet with non-trivial batch norms and the case's member of it, extracted."""
    seed, bits, forced = CASES[case]
    net = supernet_with_random_bn(space, seed)
    bit_keys = {f"stage{i}__{k}": bits for i in (1, 2, 3) for k in ("wbits", "abits")}
    config = space.sample(random.Random(seed)).replace(**forced, **bit_keys)
    return net, config, extract(net, config).eval()


def blocks_run(static):
    return [b for stage in static.stages for b in stage
            if not isinstance(b, torch.nn.Identity)]


def test_the_cases_cover_skips_residual_first_blocks_and_the_head_conv(fbnet):
    statics = {c: member(fbnet, c)[2] for c in CASES}
    skipped = {c: len(blocks_run(st)) < sum(len(stage) for stage in st.stages)
               for c, st in statics.items()}
    assert skipped == {"skip+head-8bit": True, "skipped-residual-first-block+head-4bit": True,
                       "skips-exit2-8bit": True, "no-skip+head-8bit": False}
    static = statics["no-skip+head-8bit"]
    assert static.stages[0][0].residual and len(static.heads["3"]) == 4  # head conv first
    assert isinstance(statics["skipped-residual-first-block+head-4bit"].stages[0][0],
                      torch.nn.Identity)


@pytest.mark.parametrize("case", list(CASES))
def test_onnxruntime_computes_the_torch_member_with_integer_kernels(fbnet, case, tmp_path):
    net, config, static = member(fbnet, case)
    wq = trained_weight_quant(net, static, config)
    assert len(wq) == 3 * len(blocks_run(static))
    model = lower_member(static, wq, SHAPE)
    optimized = tmp_path / "optimized.onnx"
    s = session(model, str(optimized))
    ops = Counter(n.op_type for n in onnx.load(optimized).graph.node)
    has_head = config["exit"] == 3
    assert ops["ConvInteger"] == 3 * len(blocks_run(static))
    assert ops["Conv"] + ops["FusedConv"] == 1 + has_head  # the stem and the head conv: float
    x = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(1))
    got = s.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = static(x)
    assert len(got) == len(want) == len(static.exit_stages)
    for g, w in zip(got, want, strict=True):  # the same model, up to float rounding
        assert (g.argmax(1) == w.numpy().argmax(1)).mean() >= 0.995
        assert np.abs(g - w.numpy()).max() < 1e-3 * np.abs(w.numpy()).max()


def test_float_lowering_equals_the_member_without_activation_quantizers(fbnet):
    _, _, static = member(fbnet, "skip+head-8bit")
    model = lower_member(static, {}, SHAPE, integer=False)
    plain = copy.deepcopy(static)
    for blk in blocks_run(plain):
        blk.quant_in = blk.quant_mid = blk.quant_dw = torch.nn.Identity()
    x = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(2))
    got = session(model).run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = plain(x)
    assert max(np.abs(g - w.numpy()).max() for g, w in zip(got, want, strict=True)) < 1e-5


def onnx_layer_name(layer_name: str) -> str:
    """``stage2.block1.dw`` (cost tables) → ``stages.1.0.conv_dw`` (the member's modules)."""
    if not layer_name.startswith("stage"):
        return layer_name  # stem, head, exitN.fc
    stage, block, op = layer_name.split(".")
    return f"stages.{int(stage[5:]) - 1}.{int(block[5:]) - 1}.conv_{op}"


@pytest.mark.parametrize("case", ["skip+head-8bit", "skips-exit2-8bit"])
def test_onnx_weight_bytes_are_the_cost_models_layer_by_layer(fbnet, case, tmp_path):
    net, config, static = member(fbnet, case)
    wq = trained_weight_quant(net, static, config)
    doc = write_member(tmp_path / "m", static, wq,
                       {"name": "m", "space": fbnet.spec, "config": config.to_dict()}, SHAPE)
    model = onnx.load(tmp_path / "m" / "model.onnx")
    payload = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert doc["weight_bytes"] == payload
    assert doc["onnx"]["argmax_agreement"] == 1.0
    rows = {r["name"]: r for r in doc["layers"]}
    layers = {onnx_layer_name(la.name): la for la in describe_layers(fbnet, config)}
    assert set(rows) == set(layers)  # skipped blocks in neither; the head conv in both
    for name, layer in layers.items():
        cost = weight_bytes(OpSignature.from_shape(layer))  # weights at their bits + 32-bit bias
        if layer.weight_bits == 32:  # stem, head conv, classifiers: float weights and bias
            assert rows[name]["weight_bytes"] == cost, name
        else:  # int8 weights and bias, plus the per-channel rescale the graph stores as float
            assert rows[name]["weight_bytes"] == cost + 4 * layer.out_channels, name
    assert json.loads(json.dumps(relower_member(tmp_path / "m"))) == \
        json.loads((tmp_path / "m" / "config.json").read_text())
