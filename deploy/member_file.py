"""Standalone member files: ``members/<name>/`` holds what one device needs and nothing else.

    model.pt       the extracted member's ``state_dict`` (torch, weights-only loadable)
    model.onnx     the member as an integer ONNX QDQ model (runs with onnxruntime alone)
    config.json    config, space, costs, accuracy; per layer its bits, trained weight scales and
                   bytes in model.onnx; the file sizes and ``weight_bytes``

Every file is read without running code from it, and a bad file is one line naming the file and
how to get a good one.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploy.family_file import EXPORT_FIX, FamilyError, load_tensors
from deploy.onnx_qdq import ONNX_OPSET, initializer_bytes, lower_member
from deploy.quant_params import HEAD_CONV, WeightQuant, block_conv_names, head_conv
from supernet.arch import ArchConfig
from supernet.extract import StaticNet, extract
from supernet.model import SuperNet
from supernet.quant import FLOAT_BITS, FakeQuantAct
from supernet.space import SearchSpace

WEIGHT_ONLY_SESSION = {"session.disable_quant_qdq": "1"}
INTEGER_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger")
WEIGHT_STORAGE = ("int8 initializers; 4-bit layers hold values in [-7, 7] (onnxruntime 1.32 "
                  "runs INT4 convolutions in float, so they are stored as int8)")


def read_member_meta(member_dir: str | Path) -> dict[str, Any]:
    """The member's ``config.json``."""
    path = Path(member_dir) / "config.json"
    if not path.is_file():
        raise FamilyError(f"member config {str(path)!r} does not exist; pass a members/<name> "
                          f"directory written by `hwnas export`, or {EXPORT_FIX}")
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        return meta
    except (ValueError, UnicodeDecodeError) as e:
        raise FamilyError(f"{path}: not a member config ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]}); {EXPORT_FIX}") from None


def load_member(member_dir: str | Path) -> StaticNet:
    """A standalone exported member (``config.json`` + ``model.pt``) as a `StaticNet`."""
    member_dir = Path(member_dir)
    meta = read_member_meta(member_dir)
    try:
        space = SearchSpace(meta["space"])
        config = ArchConfig.from_dict(meta["config"])
        space.validate(config)
    except (KeyError, TypeError, ValueError) as e:
        raise FamilyError(f"{member_dir / 'config.json'}: no valid space and config "
                          f"({type(e).__name__}: {e}); {EXPORT_FIX}") from None
    static = extract(SuperNet(space).eval(), config)
    state = load_tensors(member_dir / "model.pt", "member checkpoint")
    try:
        static.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise FamilyError(f"{member_dir / 'model.pt'}: its tensors do not fit the member in "
                          f"config.json ({str(e).splitlines()[0]}); {EXPORT_FIX}") from None
    return static.eval()


def load_weight_quant(member_dir: str | Path) -> dict[str, WeightQuant]:
    """The trained weight bits and per-channel scales stored in the member's ``config.json``."""
    layers = read_member_meta(member_dir).get("layers", [])
    return {la["name"]: WeightQuant(int(la["weight_bits"]),
                                    torch.tensor(la["weight_scale"], dtype=torch.float32))
            for la in layers if "weight_scale" in la}


def layer_table(static: StaticNet, weight_quant: Mapping[str, WeightQuant]
                ) -> list[dict[str, Any]]:
    """Per layer of ``static``: name, kind, weight bits, activation (input) bits, ``groups``
    of a grouped conv and, when quantized, the trained per-output-channel weight scale."""
    rows = [{"name": "stem", "kind": "conv", "weight_bits": FLOAT_BITS, "act_bits": FLOAT_BITS}]
    for name, _, _ in block_conv_names(static):
        block = static.get_submodule(name.rsplit(".", 1)[0])
        conv = static.get_submodule(name)
        op = name.rsplit(".", 1)[1]
        quant = block.quant_mid if op == "conv_dw" else block.quant_dw if op == "conv_pwl" \
            else block.quant_in  # conv_pw, or a skip's conv
        q = weight_quant.get(name)
        row = {"name": name, "kind": "dwconv" if op == "conv_dw" else "conv",
               "weight_bits": q.bits if q else FLOAT_BITS,
               "act_bits": quant.bits if isinstance(quant, FakeQuantAct) else FLOAT_BITS}
        if op != "conv_dw" and conv.groups > 1:  # a grouped 1x1 conv
            row["groups"] = conv.groups
        if q is not None:
            row["weight_scale"] = q.scale.tolist()
        rows.append(row)
    for s in static.exit_stages:
        if head_conv(static.heads[str(s)]) is not None:
            rows.append({"name": HEAD_CONV, "kind": "conv", "weight_bits": FLOAT_BITS,
                         "act_bits": FLOAT_BITS})
        rows.append({"name": f"exit{s}.fc", "kind": "linear", "weight_bits": FLOAT_BITS,
                     "act_bits": FLOAT_BITS})
    return rows


def integer_ops(onnx_path: str | Path) -> dict[str, int]:
    """How many nodes of each integer kernel onnxruntime's optimized graph of the file runs."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3  # the NCHWc warning about hardware-specific graphs
        ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    return {op: ops[op] for op in INTEGER_OPS if ops[op]}


def onnx_check(static: StaticNet, onnx_path: Path, input_shape: Sequence[int],
               seed: int = 0) -> dict[str, Any]:
    """onnxruntime against torch on 64 random inputs: max |logit difference| and argmax
    agreement of the last exit."""
    import onnxruntime as ort

    x = torch.randn(64, *input_shape, generator=torch.Generator().manual_seed(seed))
    opts = ort.SessionOptions()
    # onnxruntime's own QDQ fusion warns about the bias scales it derives; nothing of ours
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = [z.numpy() for z in static(x)]
    return {"max_abs_diff": float(max(np.abs(g - w).max() for g, w in zip(got, want,
                                                                          strict=True))),
            "argmax_agreement": float((got[-1].argmax(1) == want[-1].argmax(1)).mean())}


GENERATED = ("layers", "input_shape", "exit_stages", "files", "weight_bytes", "weight_storage",
             "onnx")


def relower_member(member_dir: str | Path, fallback: str | None = None) -> dict[str, Any]:
    """Write ``model.onnx`` and ``config.json`` of an exported member again from its ``model.pt``
    and stored scales with this hwnas's lowering; returns the new ``config.json``."""
    meta = read_member_meta(member_dir)
    kept = {k: v for k, v in meta.items() if k not in GENERATED}
    return write_member(member_dir, load_member(member_dir), load_weight_quant(member_dir), kept,
                        meta["input_shape"], fallback=fallback)


def write_member(member_dir: str | Path, static: StaticNet,
                 weight_quant: Mapping[str, WeightQuant], meta: Mapping[str, Any],
                 input_shape: Sequence[int], *, onnx: bool = True, seed: int = 0,
                 fallback: str | None = None) -> dict[str, Any]:
    """Write ``model.pt``, ``model.onnx`` (integer) and ``config.json`` (``meta`` plus layers,
    bytes and the ONNX check) into ``member_dir``; returns what ``config.json`` holds."""
    import onnx as onnx_lib

    member_dir = Path(member_dir)
    member_dir.mkdir(parents=True, exist_ok=True)
    static = static.eval().cpu()
    torch.save(static.state_dict(), member_dir / "model.pt")
    layers = layer_table(static, weight_quant)
    doc = {**meta, "layers": layers, "input_shape": list(input_shape),
           "exit_stages": list(static.exit_stages)}
    files = {"model.pt": (member_dir / "model.pt").stat().st_size}
    if onnx:
        model = lower_member(static, weight_quant, input_shape, fallback=fallback)
        onnx_lib.save(model, member_dir / "model.onnx")
        sizes: dict[str, int] = {}
        for t in model.graph.initializer:
            layer = t.name.rsplit("_", 1)[0].rsplit(".", 1)[0]
            sizes[layer] = sizes.get(layer, 0) + onnx_lib.numpy_helper.to_array(t).nbytes
        for row in layers:
            row["weight_bytes"] = sizes.get(row["name"], 0)
        files["model.onnx"] = (member_dir / "model.onnx").stat().st_size
        doc["weight_bytes"] = initializer_bytes(model)
        doc["weight_storage"] = WEIGHT_STORAGE
        doc["onnx"] = {"file": "model.onnx", "opset": ONNX_OPSET, "integer": True,
                       "integer_ops": integer_ops(member_dir / "model.onnx"),
                       **onnx_check(static, member_dir / "model.onnx", input_shape, seed)}
        if all(row["act_bits"] >= FLOAT_BITS for row in layers):
            # no activation is quantized, so no integer kernel applies: let onnxruntime fold
            # the int8 weights to float once at load instead of dequantizing them every run
            doc["onnx"]["session_config"] = WEIGHT_ONLY_SESSION
    doc["files"] = files
    (member_dir / "config.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc
