"""A measured table says where it was measured; a host that is not that machine is detected."""

import json
from dataclasses import replace

import pytest

from costmodels import CostTable, OpSignature, build_analytic_table, build_measured_table
from costmodels.cli import main
from costmodels.host import (
    ForeignTableError,
    check_host,
    cpu_model,
    probe_times,
    rebuild_command,
    require_host,
)
from nas.quickstart import ensure_table
from tests.conftest import TINY


@pytest.fixture(scope="module")
def measured(tiny) -> CostTable:
    return build_measured_table(tiny, "cpu", warmup=1, repeats=3, progress=False,
                                clock="thread", space_file=TINY)


def same_probe(table, space):
    """A probe that finds exactly the recorded times (no timing in the verdict)."""
    return dict(table.meta.probe)


def test_a_built_table_records_its_provenance(measured):
    meta = measured.meta
    assert meta.host["cpu"] == cpu_model() and meta.host["threads"] == 1
    assert {"cores", "torch", "onnxruntime", "python", "os"} <= set(meta.host)
    assert "thread clock" in meta.protocol and "1 thread" in meta.protocol
    assert len(meta.probe) == 5 and all(t > 0 for t in meta.probe.values())
    assert all(OpSignature.parse(key).weight_bits == 32 for key in meta.probe)  # runtime shapes
    assert meta.created and measured.overhead["latency_ms"] > 0
    assert CostTable.from_dict(json.loads(json.dumps(measured.to_dict()))).id == measured.id


def test_this_host_matches_its_own_table(measured, tiny):
    verdict = check_host(measured, tiny, measure=same_probe)
    assert not verdict.foreign and verdict.ratio == pytest.approx(1.0)
    real = probe_times(measured, tiny)  # re-timed for real: positive, same keys
    assert set(real) == set(measured.meta.probe) and min(real.values()) > 0


def test_a_table_from_another_cpu_is_foreign_in_one_line(measured, tiny):
    host = {**measured.meta.host, "cpu": "Imaginary CPU 9000"}
    other = CostTable(measured.entries, replace(measured.meta, host=host), measured.overhead)
    verdict = check_host(other, tiny, measure=same_probe)
    assert verdict.foreign and "Imaginary CPU 9000" in verdict.reason
    with pytest.raises(ForeignTableError) as err:
        require_host(other, tiny, TINY, measure=same_probe)
    message = str(err.value)
    assert "\n" not in message and other.id in message and "--allow-foreign-table" in message
    assert rebuild_command(other, TINY, "runs/tables/tiny_cpu_1t.json") in message
    assert require_host(other, tiny, TINY, allow_foreign=True, measure=same_probe).foreign


def test_a_scaled_copy_is_caught_by_the_probe(measured, tiny):
    scaled = CostTable(
        {k: {**e, "latency_ms": 3 * e["latency_ms"]} for k, e in measured.entries.items()},
        replace(measured.meta, probe={k: 3 * v for k, v in measured.meta.probe.items()}),
        measured.overhead)
    verdict = check_host(scaled, tiny, measure=lambda t, s: dict(measured.meta.probe))
    assert verdict.foreign and verdict.ratio == pytest.approx(1 / 3)
    assert "0.33x" in verdict.reason and "\n" not in verdict.reason


def test_tables_without_provenance_and_analytic_tables(measured, tiny):
    old = CostTable(measured.entries, replace(measured.meta, host={}, probe={}, format_version=1))
    assert check_host(old, tiny).foreign and "no provenance" in check_host(old, tiny).reason
    assert not check_host(build_analytic_table(tiny, "mcu"), tiny).foreign


def test_check_stops_on_a_foreign_table_and_writes_under_runs(measured, tmp_path,
                                                              monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    host = {**measured.meta.host, "cpu": "Imaginary CPU 9000"}
    path = CostTable(measured.entries, replace(measured.meta, host=host),
                     measured.overhead).save(tmp_path / "tables" / "foreign.json")
    args = ["check", "--space", TINY, "--table", str(path), "--samples", "2",
            "--fit-samples", "0", "--repeats", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Imaginary CPU 9000" in err and "hwnas costs build" in err
    assert main([*args, "--allow-foreign-table"]) == 0
    assert (tmp_path / "runs" / "fidelity" / "foreign" / "fidelity.json").is_file()
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["foreign.json"]


def test_quickstart_builds_this_hosts_table_when_its_table_is_foreign(measured, tmp_path,
                                                                      capsys, monkeypatch):
    host = {**measured.meta.host, "cpu": "Imaginary CPU 9000"}
    foreign = CostTable(measured.entries, replace(measured.meta, host=host),
                        measured.overhead).save(tmp_path / "foreign.json")
    got = ensure_table(TINY, foreign, cache_root=tmp_path / "runs" / "tables",
                       progress=False, warmup=1, repeats=3)
    assert got == tmp_path / "runs" / "tables" / "tiny_cpu_1t.json"
    built = CostTable.load(got)
    assert built.meta.host["cpu"] == cpu_model() and built.meta.method == "measured"
    out = capsys.readouterr().out
    assert "does not describe this host (measured on cpu 'Imaginary CPU 9000'" in out
    assert "building this host's table" in out
    # the next run reuses this host's table and says so, without claiming to build it again
    # (its reference layers probed as recorded: a busy box must not make it look foreign)
    monkeypatch.setattr("costmodels.host.probe_times", lambda t, space: dict(t.meta.probe))
    assert ensure_table(TINY, foreign, cache_root=tmp_path / "runs" / "tables",
                        progress=False) == got
    out = capsys.readouterr().out
    assert "using this host's own table" in out and "building" not in out
    assert CostTable.load(got).id == built.id
    assert ensure_table(TINY, foreign, allow_foreign=True, cache_root=tmp_path) == foreign
