"""HW-NAS-Bench-format block tables: imported exactly, or refused with one line."""

import json
import random
from pathlib import Path

import pytest

from costmodels import CostTable, ExpectedCost, table_cost
from nas.cli import main as hwnas
from supernet import SearchSpace

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "tables" / "examples" / "hw_nas_bench_synthetic_cifar32.json"
SPACE = ROOT / "configs" / "spaces" / "fbnet_cifar32.yaml"


@pytest.fixture(scope="module")
def data():
    return json.loads(EXAMPLE.read_text())


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_yaml(SPACE)


def run(tmp_path, path, *extra, device="pixel3", metric="latency"):
    return hwnas(["costs", "import", "--hw-nas-bench", str(path), "--device", device,
                  "--metric", metric, "--space", str(SPACE), "--out", str(tmp_path / "t.json"),
                  *extra])


def refused(capsys, code, *fragments):
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err, err
    for f in fragments:
        assert f in err, err
    return err


def write(tmp_path, data, name="hw.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def by_hand(space, entries, arch) -> float:
    """The file's own entries for this member, summed: stem, each block (or its skip), head
    conv, pooling and classifier."""
    v = space.validate(arch)
    size = space.input_size // space.stem.stride
    total = entries[f"ConvNorm_{space.input_size}_{space.input_size}_3_16_3_1"]
    for b in space.blocks:
        cin = b.in_width if isinstance(b.in_width, int) else v[b.in_width]
        if b.run and v[b.run] == 0:  # the identity, or a 1x1 conv where shapes change
            total += entries[f"Skip_{size}_{size}_{cin}_{v[b.width]}_{b.stride}"]
        else:  # FBNet's grouped candidates: 2 groups, only at expansion 1
            groups = 2 if v[b.dense] == 0 and v[b.expand] == 1 else 1
            total += entries[f"ConvBlock_{size}_{size}_{cin}_{v[b.width]}_{v[b.expand]}_"
                             f"{v[b.kernel]}_{b.stride}_{groups}"]
        size = -(-size // b.stride)
    return (total + entries[f"ConvNorm_{size}_{size}_352_1504_1_1"]
            + entries[f"AvgP_{size}_{size}_1504"] + entries["FC_1504_100"])


def by_hand_form(space, b, arch) -> str:
    v = space.validate(arch)
    if v[b.run] == 0:
        return "skip"
    return "grouped" if v[b.dense] == 0 and v[b.expand] == 1 else "dense"


@pytest.mark.parametrize("device", ["pixel3", "fpga"])
def test_member_cost_is_the_sum_of_its_block_entries(tmp_path, capsys, data, space, device):
    assert run(tmp_path, EXAMPLE, device=device) == 0
    assert "covers every member" in capsys.readouterr().out
    table = CostTable.load(tmp_path / "t.json")
    assert table.meta.target == device and "in ms" in table.meta.notes
    cost = ExpectedCost(space, table)
    rng = random.Random(0)
    all_grouped = space.smallest().replace(**{b.run.replace(".", "__"): 1 for b in space.blocks})
    archs = [space.largest(), space.smallest(), all_grouped] + [
        space.sample(rng) for _ in range(40)]
    # every block position takes each of its forms in some member: grouped, dense, skipped
    forms = {(b.name, by_hand_form(space, b, a)) for a in archs for b in space.blocks}
    assert len(forms) == sum(3 if b.dense else 2 for b in space.blocks)
    for arch in archs:
        want = by_hand(space, data[device]["latency"], arch)
        assert table_cost(space, table, arch) == pytest.approx(want, rel=1e-12)
        assert cost(space.one_hot(arch)).item() == cost.concrete(arch)


def test_units_are_converted_and_stated(tmp_path, data, space):
    micro = {"units": {"latency": "us"},
             "pixel3": {"latency": {k: v * 1000 for k, v in data["pixel3"]["latency"].items()}}}
    assert run(tmp_path, write(tmp_path, micro), "--ignore-unused") == 0
    table = CostTable.load(tmp_path / "t.json")
    arch = space.largest()
    assert table_cost(space, table, arch) == pytest.approx(
        by_hand(space, data["pixel3"]["latency"], arch), rel=1e-9)
    assert "in us, × 0.001 to ms" in table.meta.notes


def test_rows_the_space_never_runs_are_refused_unless_dropped_on_purpose(tmp_path, capsys,
                                                                        data, space):
    extra = json.loads(json.dumps(data))
    extra["pixel3"]["latency"]["ConvBlock_32_32_16_16_1_3_1_4"] = 1.0  # 4 groups: not offered
    path = write(tmp_path, extra)
    refused(capsys, run(tmp_path, path), "--ignore-unused")
    assert run(tmp_path, path, "--ignore-unused") == 0
    table = CostTable.load(tmp_path / "t.json")
    assert table_cost(space, table, space.largest()) == pytest.approx(
        by_hand(space, data["pixel3"]["latency"], space.largest()), rel=1e-12)


def test_missing_entries_are_counted_with_a_template_and_a_valid_command(tmp_path, capsys,
                                                                         data):
    partial = {"units": data["units"], "pixel3": {"latency": {
        k: v for k, v in data["pixel3"]["latency"].items() if not k.startswith("ConvBlock_4_")}}}
    path = write(tmp_path, partial)
    # the 4x4 blocks: two shapes (184->184, 184->352) x 2 kernels x (3 dense + 1 grouped)
    err = refused(capsys, run(tmp_path, path), "the table lacks 16 of the",
                  "and 11 more", f"hwnas costs import --hw-nas-bench {path} --device pixel3 "
                  f"--metric latency --space {SPACE} --out {tmp_path / 't.json'}` again")
    template = json.loads((tmp_path / "t.missing.json").read_text())
    assert sorted(template["pixel3"]["latency"]) == sorted(
        k for k in data["pixel3"]["latency"] if k.startswith("ConvBlock_4_")
    ) and str(tmp_path / "t.missing.json") in err


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda d: d["pixel3"]["latency"].update({"Conv_3_3": 1.0}),
     "key 'Conv_3_3' is not an HW-NAS-Bench block key"),
    (lambda d: d["pixel3"]["latency"].update({"ConvBlock_8_4_16_16_1_3_1_1": 1.0}),
     "input 8x4 is not square"),
    (lambda d: d.pop("units"), "states no unit for latency; pass --unit"),
    (lambda d: d.update(units={"latency": "furlongs"}), "'furlongs' is not a unit of latency"),
    (lambda d: d["pixel3"]["latency"].update({"FC_1504_100": -1}), "is not a non-negative"),
])
def test_bad_tables_are_refused_with_one_line(tmp_path, capsys, data, change, fragment):
    bad = json.loads(json.dumps(data))
    change(bad)
    refused(capsys, run(tmp_path, write(tmp_path, bad), "--ignore-unused"), fragment)


def test_duplicate_keys_unknown_device_and_missing_arguments(tmp_path, capsys):
    text = EXAMPLE.read_text().replace('"FC_1504_100": ', '"FC_1504_100": 1.0, "FC_1504_100": ', 1)
    dup = tmp_path / "dup.json"
    dup.write_text(text)
    refused(capsys, run(tmp_path, dup, "--ignore-unused"), "'FC_1504_100' appears twice")
    refused(capsys, run(tmp_path, EXAMPLE, device="edgegpu"), "'edgegpu' is not in",
            "['fpga', 'pixel3']")
    refused(capsys, run(tmp_path, EXAMPLE, metric="energy"), "has ['latency']")
    code = hwnas(["costs", "import", "--hw-nas-bench", str(EXAMPLE), "--out",
                  str(tmp_path / "x.json")])
    refused(capsys, code, "--hw-nas-bench needs --space --device --metric")


def test_a_lookup_the_table_lacks_advises_the_block_import(tmp_path, space):
    assert run(tmp_path, EXAMPLE, "--ignore-unused") == 0
    table = CostTable.load(tmp_path / "t.json")
    entries = dict(table.entries)
    entries.pop(next(k for k in entries if k.startswith("block_")))
    with pytest.raises(LookupError) as err:
        CostTable(entries, table.meta).check_covers(space)
    assert "hwnas costs import --hw-nas-bench <file.json> --device pixel3" in str(err.value)
