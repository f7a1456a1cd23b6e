"""Integer lowering of FBNet-shaped members: skipped blocks (the identity, or a 1x1 conv where
the identity does not fit), grouped 1x1 convs with a channel shuffle, residual first blocks, a
head conv."""

import copy
import dataclasses
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
from deploy import (
    FamilyFile,
    FamilyRuntime,
    MemberRecord,
    lower_member,
    member_state,
    trained_weight_quant,
    write_family,
    write_member,
)
from deploy.member_file import relower_member
from supernet import SearchSpace, extract
from supernet.blocks import StaticSkipConv
from supernet.layers import describe_layers
from supernet.quant import ActQuantizer
from tests.deploy.test_onnx_qdq import session, supernet_with_random_bn

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (3, 16, 16)
# (sample seed, bits, decisions forced on top of the sample): each case says what it covers.
# stage2.block1 changes width and stride, so its skip is a 1x1 conv; grouped 1x1 convs need
# dense 0 at expand 1.
CASES = {
    "skip+head-8bit": (0, 8, {"exit": 3, "stage1__block2__run": 0, "stage2__block1__run": 1,
                              "stage2__block2__run": 1}),
    "skipped-residual-first-block+head-4bit": (1, 4, {"exit": 3, "stage1__block1__run": 0,
                                                      "stage2__block1__run": 1}),
    "skips-exit2-8bit": (2, 8, {"exit": 2, "stage1__block1__run": 0, "stage2__block1__run": 1,
                                "stage2__block2__run": 0}),
    "no-skip+head-8bit": (3, 8, {"exit": 3, "stage1__block1__run": 1, "stage1__block2__run": 1,
                                 "stage2__block1__run": 1, "stage2__block2__run": 1}),
    # grouped: a residual first block, and the stride-2 block that widens 8 → 12
    "grouped+head-8bit": (4, 8, {"exit": 3, "stage1__block1__run": 1, "stage1__block1__expand": 1,
                                 "stage1__block1__dense": 0, "stage1__block2__dense": 1,
                                 "stage2__block1__run": 1, "stage2__block1__expand": 1,
                                 "stage2__block1__dense": 0, "stage2__block2__dense": 1}),
    # the 1x1 skip conv feeding a grouped residual block
    "skip-conv+grouped-4bit": (5, 4, {"exit": 2, "stage1__block1__dense": 1,
                                      "stage1__block2__dense": 1, "stage2__block1__run": 0,
                                      "stage2__block2__run": 1, "stage2__block2__expand": 1,
                                      "stage2__block2__dense": 0}),
    "skip-conv+head-8bit": (6, 8, {"exit": 3, "stage1__block1__dense": 1,
                                   "stage1__block2__dense": 1, "stage2__block1__run": 0,
                                   "stage2__block2__dense": 1}),
}


@pytest.fixture(scope="module")
def fbnet() -> SearchSpace:
    """fbnet_tiny with quantized bit-width choices (the file itself searches float only)."""
    spec = yaml.safe_load((ROOT / "configs/spaces/fbnet_tiny.yaml").read_text())
    return SearchSpace({**spec, "weight_bits": [4, 8, 32], "act_bits": [4, 8, 32]})


# 4-bit activation step: the initial one (±4 in 16 steps of 0.5) rounds most of this untrained
# net's activations (|x| mostly < 0.5 after the first block) to zero, so deep layers would compute
# nothing worth comparing
STEP_4BIT = 0.1


def member(space, case):
    """A supernet with non-trivial batch norms and the case's member of it, extracted."""
    seed, bits, forced = CASES[case]
    net = supernet_with_random_bn(space, seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ActQuantizer):
                m.step[m.bit_choices.index(4)] = STEP_4BIT
    bit_keys = {f"stage{i}__{k}": bits for i in (1, 2, 3) for k in ("wbits", "abits")}
    config = space.sample(random.Random(seed)).replace(**forced, **bit_keys)
    return net, config, extract(net, config).eval()


def blocks_run(static):
    """The blocks that compute (a skip conv included): all but the identity skips."""
    return [b for stage in static.stages for b in stage
            if not isinstance(b, torch.nn.Identity)]


def kinds(static) -> Counter:
    """How many blocks of each kind ``static`` has: identity and conv skips, grouped and dense
    blocks."""
    def kind(b):
        if isinstance(b, (torch.nn.Identity, StaticSkipConv)):
            return "identity" if isinstance(b, torch.nn.Identity) else "skip-conv"
        return "grouped" if b.conv_pw.groups > 1 else "dense"

    return Counter(kind(b) for stage in static.stages for b in stage)


def conv_count(static) -> int:
    """Quantized convs the member runs: three per block, one per skip conv."""
    return sum(1 if isinstance(b, StaticSkipConv) else 3 for b in blocks_run(static))


def test_the_cases_cover_skips_grouped_convs_residual_first_blocks_and_the_head_conv(fbnet):
    statics = {c: member(fbnet, c)[2] for c in CASES}
    got = {c: {k: v for k, v in kinds(st).items() if k != "dense"} for c, st in statics.items()}
    assert got == {"skip+head-8bit": {"identity": 1},
                   "skipped-residual-first-block+head-4bit": {"identity": 3},
                   "skips-exit2-8bit": {"identity": 2},
                   "no-skip+head-8bit": {},
                   "grouped+head-8bit": {"grouped": 2},
                   "skip-conv+grouped-4bit": {"identity": 1, "skip-conv": 1, "grouped": 1},
                   "skip-conv+head-8bit": {"skip-conv": 1}}
    static = statics["no-skip+head-8bit"]
    assert static.stages[0][0].residual and len(static.heads["3"]) == 4  # head conv first
    assert isinstance(statics["skipped-residual-first-block+head-4bit"].stages[0][0],
                      torch.nn.Identity)
    grouped = statics["grouped+head-8bit"]
    assert grouped.stages[0][0].residual and isinstance(grouped.stages[0][0].shuffle,
                                                        torch.nn.ChannelShuffle)
    assert grouped.stages[1][0].conv_dw.stride == (2, 2)  # widens 8 → 12 at stride 2, grouped
    assert grouped.stages[1][0].conv_pwl.weight.shape == (12, 4, 1, 1)
    skip = statics["skip-conv+head-8bit"].stages[1][0]
    assert isinstance(skip, StaticSkipConv) and skip.conv.stride == (2, 2)
    assert (skip.conv.in_channels, skip.conv.out_channels) == (8, 12)
    assert [c for c in CASES if CASES[c][1] == 4 and {"grouped", "skip-conv"} <= set(got[c])]


def shuffles(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """Every Reshape → Transpose(0, 2, 1, 3) → Reshape chain of ``model``: the op that made its
    input and the ``group`` of the conv it feeds."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = []
    for t in (n for n in model.graph.node if n.op_type == "Transpose"):
        split, (merge,) = producer[t.input[0]], consumers[t.output[0]]
        assert split.op_type == merge.op_type == "Reshape"
        assert list(onnx.helper.get_attribute_value(t.attribute[0])) == [0, 2, 1, 3]
        (conv,) = (n for n in consumers[merge.output[0]] if n.op_type.startswith("Conv"))
        group = next(a.i for a in conv.attribute if a.name == "group")
        found.append((producer[split.input[0]].op_type, group))
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_onnxruntime_computes_the_torch_member_with_integer_kernels(fbnet, case, tmp_path):
    net, config, static = member(fbnet, case)
    wq = trained_weight_quant(net, static, config)
    assert len(wq) == conv_count(static)
    model = lower_member(static, wq, SHAPE)
    grouped = kinds(static)["grouped"]
    # the shuffle moves the uint8 codes quant_dw made, into the grouped projection
    assert shuffles(model) == [("QuantizeLinear", 2)] * grouped
    optimized = tmp_path / "optimized.onnx"
    s = session(model, str(optimized))
    nodes = onnx.load(optimized).graph.node
    ops = Counter(n.op_type for n in nodes)
    has_head = config["exit"] == 3
    assert ops["ConvInteger"] == conv_count(static)
    assert sum(n.op_type == "ConvInteger" and onnx.helper.get_node_attr_value(n, "group") == 2
               for n in nodes) == 2 * grouped  # both 1x1 convs of a grouped block
    assert ops["Conv"] + ops["FusedConv"] == 1 + has_head  # the stem and the head conv: float
    x = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(1))
    got = s.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = static(x)
    assert len(got) == len(want) == len(static.exit_stages)
    for g, w in zip(got, want, strict=True):  # the same model, up to float rounding
        assert (g.argmax(1) == w.numpy().argmax(1)).mean() >= 0.995
        # float rounding may tip an activation at a rounding tie one step the other way,
        # which moves that sample's logits by more than rounding: allow it in 0.5 % of samples
        close = np.abs(g - w.numpy()).max(1) < 1e-3 * np.abs(w.numpy()).max()
        assert close.mean() >= 0.995


def test_qlinear_lowering_fuses_grouped_convs_into_qlinearconv(fbnet, tmp_path):
    net, config, static = member(fbnet, "skip-conv+grouped-4bit")
    model = lower_member(static, trained_weight_quant(net, static, config), SHAPE, qlinear=True)
    optimized = tmp_path / "optimized.onnx"
    s = session(model, str(optimized))
    groups = Counter((n.op_type, onnx.helper.get_node_attr_value(n, "group"))
                     for n in onnx.load(optimized).graph.node if "Conv" in n.op_type)
    # the grouped expand conv feeds a quantizer (QLinearConv); the projection stays ConvInteger
    assert groups[("QLinearConv", 2)] == groups[("ConvInteger", 2)] == 1
    x = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(1))
    (got,) = s.run(None, {"input": x.numpy()})
    with torch.no_grad():
        (want,) = static(x)
    assert (got.argmax(1) == want.numpy().argmax(1)).mean() >= 0.995


@pytest.mark.parametrize("case", ["skip+head-8bit", "skip-conv+grouped-4bit"])
def test_float_lowering_equals_the_member_without_activation_quantizers(fbnet, case):
    _, _, static = member(fbnet, case)
    model = lower_member(static, {}, SHAPE, integer=False)
    assert len(shuffles(model)) == kinds(static)["grouped"]
    plain = copy.deepcopy(static)
    for blk in blocks_run(plain):
        blk.quant_in = torch.nn.Identity()
        if not isinstance(blk, StaticSkipConv):
            blk.quant_mid = blk.quant_dw = torch.nn.Identity()
    x = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(2))
    got = session(model).run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = plain(x)
    assert max(np.abs(g - w.numpy()).max() for g, w in zip(got, want, strict=True)) < 1e-5


def onnx_layer_name(layer_name: str) -> str:
    """``stage2.block1.dw`` (cost tables) → ``stages.1.0.conv_dw`` (the member's modules); a
    skip conv ``stage2.block1.skip`` → ``stages.1.0.conv``."""
    if not layer_name.startswith("stage"):
        return layer_name  # stem, head, exitN.fc
    stage, block, op = layer_name.split(".")
    conv = "conv" if op == "skip" else f"conv_{op}"
    return f"stages.{int(stage[5:]) - 1}.{int(block[5:]) - 1}.{conv}"


@pytest.mark.parametrize("case", ["skip+head-8bit", "skips-exit2-8bit", "grouped+head-8bit",
                                  "skip-conv+grouped-4bit", "skip-conv+head-8bit"])
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
    assert set(rows) == set(layers)  # identity skips in neither; skip and head convs in both
    for name, layer in layers.items():
        assert rows[name].get("groups", 1) == layer.group, name
        assert rows[name]["kind"] == layer.kind, name
        if layer.weight_bits == 32:  # stem, head conv, classifiers: float weights and bias
            assert rows[name]["weight_bytes"] == weight_bytes(OpSignature.from_shape(layer)), name
        else:  # weights as int8 (4-bit ones too), 32-bit bias, plus the float rescale per channel
            stored = dataclasses.replace(layer, weight_bits=8)
            cost = weight_bytes(OpSignature.from_shape(stored))
            assert rows[name]["weight_bytes"] == cost + 4 * layer.out_channels, name
    assert json.loads(json.dumps(relower_member(tmp_path / "m"))) == \
        json.loads((tmp_path / "m" / "config.json").read_text())


def test_a_family_of_grouped_and_skip_conv_members_round_trips(fbnet, tmp_path):
    """The family file keeps a skip conv's and a grouped block's weights and each member's own
    batch-norm statistics (the skip's ``stages.1.0.bn`` too)."""
    net, _, _ = member(fbnet, "skip-conv+grouped-4bit")
    records, statics = [], []
    for i, case in enumerate(["skip-conv+grouped-4bit", "grouped+head-8bit"]):
        config = member(fbnet, case)[1]
        static = extract(net, config).eval()
        with torch.no_grad():
            for m in static.modules():  # statistics of its own, as recalibration gives
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_()
        records.append(MemberRecord(case, config, {"latency_ms": float(i)}, {},
                                    member_state(static)))
        statics.append(static)
    assert "stages.1.0.bn.running_mean" in records[0].state
    path = write_family(FamilyFile(fbnet.spec, net.state_dict(), records, "latency_ms"),
                        tmp_path / "family.pt")
    runtime = FamilyRuntime.load(path)
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(3))
    for rec, static in zip(records, statics, strict=True):
        runtime.set_member(rec.name)
        assert kinds(runtime.module) == kinds(static)
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(runtime(x), static(x), strict=True))
