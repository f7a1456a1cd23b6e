import pytest
import torch

from costmodels import OpSignature, build_measured_table, measure_network_latency
from costmodels.profile import op_module, runtime_signature
from supernet import SuperNet, extract


def test_measured_table_covers_the_space(tiny):
    table = build_measured_table(tiny, "cpu", warmup=1, repeats=3, progress=False)
    table.check_covers(tiny)
    meta = table.meta
    assert (meta.method, meta.target, meta.threads, meta.repeats) == ("measured", "cpu", 1, 3)
    assert "weight bits" in meta.notes and meta.torch_version == torch.__version__
    for key, entry in table.entries.items():
        assert entry["latency_ms"] > 0, key
        assert entry["macs"] > 0
    sig = next(OpSignature.parse(k) for k in table.entries if "_w4_" in k)
    assert table.lookup(sig, "latency_ms") == table.lookup(sig.with_bits(8), "latency_ms")


def test_op_module_runs_the_signature_shape():
    for sig in (OpSignature("conv", 8, 16, 3, 2, 9, 4, 4),
                OpSignature("dwconv", 16, 16, 5, 1, 8, activation=False),
                OpSignature("linear", 16, 10, 0, 1, 4, activation=False)):
        module = op_module(sig, "relu6")
        out = module(torch.randn(2, sig.in_channels, sig.in_size, sig.in_size))
        if sig.kind == "linear":
            assert out.shape == (2, sig.out_channels)
        else:
            assert out.shape == (2, sig.out_channels, sig.out_size, sig.out_size)
    assert runtime_signature(OpSignature("conv", 8, 8, 1, 1, 4, 4, 4)) == \
        runtime_signature(OpSignature("conv", 8, 8, 1, 1, 4, 8, 8))


def test_network_latency_is_positive(tiny):
    static = extract(SuperNet(tiny).eval(), tiny.smallest())
    ms, spread = measure_network_latency(static, (1, 1, 16, 16), "cpu", 1, warmup=1, repeats=3)
    assert ms > 0 and spread >= 0


def test_thread_clock_needs_one_cpu_thread(tiny):
    table = build_measured_table(tiny, "cpu", warmup=1, repeats=2, progress=False,
                                 clock="thread")
    assert table.meta.clock == "thread"
    assert all(e["latency_ms"] > 0 for e in table.entries.values())
    with pytest.raises(ValueError, match="threads=1"):
        build_measured_table(tiny, "cpu", threads=2, clock="thread", progress=False)
