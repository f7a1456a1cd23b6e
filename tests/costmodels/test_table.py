import csv
import json

import pytest

from costmodels import CostTable, MissingSignatureError, OpSignature, TableError, TableMeta
from costmodels.imports import read_csv
from costmodels.table import FORMAT_VERSION
from supernet import SearchSpace


def test_json_round_trip(tiny_table, tmp_path):
    path = tiny_table.save(tmp_path / "t.json")
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temporary file left behind
    loaded = CostTable.load(path)
    assert loaded.entries == tiny_table.entries
    assert loaded.meta == tiny_table.meta
    assert loaded.id == tiny_table.id


def test_csv_round_trip(tiny_table, tmp_path):
    path = tiny_table.to_csv(tmp_path / "t.csv")
    meta = TableMeta(target="edgetpu", method="imported")
    imported = read_csv(path, meta)
    assert imported.entries == tiny_table.entries


def test_csv_without_activation_column_prices_both(tmp_path):
    path = tmp_path / "hw.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "in_channels", "out_channels", "kernel", "stride", "in_size",
                    "weight_bits", "act_bits", "batch", "latency_ms"])
        w.writerow(["conv", 8, 16, 1, 1, 8, 8, 8, 1, 0.25])
    table = read_csv(path, TableMeta(target="npu"))
    sig = OpSignature("conv", 8, 16, 1, 1, 8, 8, 8, 1)
    assert table.lookup(sig, "latency_ms") == 0.25
    assert table.lookup(OpSignature("conv", 8, 16, 1, 1, 8, 8, 8, 1, activation=False),
                        "latency_ms") == 0.25


def test_csv_missing_column_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("kind,in_channels,latency_ms\nconv,8,1.0\n")
    with pytest.raises(TableError, match="out_channels"):
        read_csv(path, TableMeta(target="npu"))


def test_missing_signature_names_it_and_the_build_command(tiny_table):
    sig = OpSignature("conv", 3, 5, 3, 1, 9, 8, 8, 1)
    with pytest.raises(MissingSignatureError) as err:
        tiny_table.lookup(sig, "latency_ms")
    text = str(err.value)
    assert sig.key in text
    assert "hwnas costs build --space" in text and "tiny.yaml" in text
    assert "--target edgetpu" in text


def test_unknown_metric_lists_the_available_ones(tiny_table):
    sig = next(iter(tiny_table.entries))
    with pytest.raises(TableError, match="available metrics.*latency_ms"):
        tiny_table.lookup(sig, "latncy_ms")


def test_check_covers_names_first_missing_signature(tiny, tiny_table):
    tiny_table.check_covers(tiny)
    entries = dict(tiny_table.entries)
    first = min(entries)
    del entries[first]
    partial = CostTable(entries, tiny_table.meta)
    with pytest.raises(MissingSignatureError, match=first):
        partial.check_covers(tiny)


def test_table_for_another_space_is_refused(tiny, tiny_table):
    other = SearchSpace({**tiny.spec, "num_classes": 7})
    with pytest.raises(TableError, match="built for space 'tiny'.*fingerprint"):
        tiny_table.check_covers(other)


def test_other_format_version_is_refused(tiny_table, tmp_path):
    data = tiny_table.to_dict()
    data["meta"]["format_version"] = FORMAT_VERSION + 1
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TableError, match="format_version"):
        CostTable.load(path)


def test_id_changes_with_content(tiny_table):
    entries = {k: dict(v) for k, v in tiny_table.entries.items()}
    entries[min(entries)]["latency_ms"] += 1.0
    assert CostTable(entries, tiny_table.meta).id != tiny_table.id


def test_saved_file_is_readable_by_others(tiny_table, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = tiny_table.save(tmp_path / "t.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
