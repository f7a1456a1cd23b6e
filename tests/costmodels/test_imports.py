"""`hwnas costs import --csv` never takes wrong data: every bad table is one line on stderr."""

import csv

import pytest

from costmodels import CostTable, TableError, TableMeta
from costmodels.imports import check_metric_column, read_csv
from nas.cli import main as hwnas
from tests.costmodels.conftest import TINY


@pytest.fixture
def good_csv(tiny_table, tmp_path):
    """The tiny space's analytic table as CSV: every signature once, nothing else."""
    return tiny_table.to_csv(tmp_path / "good.csv")


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def write(path, table):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(table)
    return path


def import_(tmp_path, csv_path, *extra):
    return hwnas(["costs", "import", "--csv", str(csv_path), "--target", "pixel3", "--space",
                  TINY.as_posix(), "--out", str(tmp_path / "out.json"), *extra])


def refused(capsys, code, *fragments):
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0, err  # one line, no traceback
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_good_csv_imports_and_covers_the_space(tmp_path, good_csv, tiny_table, capsys):
    assert import_(tmp_path, good_csv) == 0
    table = CostTable.load(tmp_path / "out.json")
    assert table.entries == tiny_table.entries and table.meta.space == "tiny"
    assert "covers every signature" in capsys.readouterr().out


def test_duplicate_signature_is_refused(tmp_path, good_csv, capsys):
    table = rows(good_csv)
    bad = write(tmp_path / "dup.csv", [*table, table[3]])
    refused(capsys, import_(tmp_path, bad), "already given on line 4", "one row per signature")


@pytest.mark.parametrize(("column", "fragment"), [
    ("expansion", "unknown column 'expansion'"),
    ("groups", "unknown column 'groups'"),
    ("latency_us", "multiply its values by 0.001 and name it latency_ms"),
    ("energy_ms", "hwnas keeps energy in mJ"),
    ("latency", "keeps latency in ms"),
])
def test_unknown_column_or_wrong_unit_is_refused(tmp_path, good_csv, capsys, column, fragment):
    table = rows(good_csv)
    bad = write(tmp_path / "col.csv", [table[0] + [column]] + [r + ["1"] for r in table[1:]])
    refused(capsys, import_(tmp_path, bad), fragment)


def test_unknown_kind_is_one_line(tmp_path, good_csv, capsys):
    table = rows(good_csv)
    table[2][0] = "block"
    bad = write(tmp_path / "kind.csv", table)
    refused(capsys, import_(tmp_path, bad), ":3: kind 'block' is not a layer kind")


def test_rows_the_space_never_runs_are_refused_or_dropped_on_request(tmp_path, good_csv,
                                                                     capsys):
    table = rows(good_csv)
    extra = list(table[1])
    extra[1] = "999"  # in_channels no layer of the space has
    bad = write(tmp_path / "unused.csv", [*table, extra])
    refused(capsys, import_(tmp_path, bad), "1 of the table's", "never run by space 'tiny'",
            "--ignore-unused")
    assert import_(tmp_path, bad, "--ignore-unused") == 0
    assert "dropped 1 signature" in capsys.readouterr().out


def test_missing_signatures_are_counted_and_a_template_written(tmp_path, good_csv, tiny_table,
                                                               capsys):
    table = rows(good_csv)
    bad = write(tmp_path / "partial.csv", table[:-12])
    err = refused(capsys, import_(tmp_path, bad), "lacks 12 of the", "and 7 more",
                  f"--space {TINY.as_posix()}")
    template = tmp_path / "out.missing.csv"
    assert str(template) in err
    lacking = rows(template)
    n = len(table[0]) - len(tiny_table.metrics)  # signature columns
    assert lacking[0] == table[0] and all(set(r[n:]) == {""} for r in lacking[1:])
    assert sorted(r[:n] for r in lacking[1:]) == sorted(r[:n] for r in table[-12:])
    write(bad, table)  # the rows filled in: the same command now succeeds
    assert import_(tmp_path, bad) == 0
    assert CostTable.load(tmp_path / "out.json").entries == tiny_table.entries


def test_advice_for_a_table_hwnas_cannot_build_is_an_import_command(tiny, tiny_table):
    partial = CostTable(dict(list(tiny_table.entries.items())[1:]),
                        TableMeta(target="pixel3", space_file="s.yaml"))
    with pytest.raises(LookupError) as err:
        partial.check_covers(tiny)
    text = str(err.value)
    assert "hwnas costs import --csv" in text and "--space s.yaml" in text
    assert "costs build" not in text


def test_mixed_batches_are_refused(tmp_path, good_csv):
    table = rows(good_csv)
    table[1][table[0].index("batch")] = "8"
    with pytest.raises(TableError, match="mix batch sizes"):
        read_csv(write(tmp_path / "b.csv", table), TableMeta(target="npu"))


def test_every_metric_hwnas_writes_is_importable(tiny_table):
    for metric in tiny_table.metrics:
        check_metric_column(metric)
