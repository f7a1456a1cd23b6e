import math
import random

import pytest
import torch
from torch import nn

from costmodels import PRESETS, OpSignature, build_analytic_table, table_cost
from costmodels.analytic import activation_bytes, get_target, macs, weight_bytes
from supernet import SuperNet, describe_layers, extract


def _hooked_macs(net: nn.Module, x: torch.Tensor) -> tuple[int, list[nn.Module]]:
    """MACs counted independently: output elements × in_channels / groups × k² (per module)."""
    total, order = [0], []

    def conv_hook(m, _inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] ** 2
        order.append(m)

    def linear_hook(m, _inp, out):
        total[0] += out.numel() * m.in_features
        order.append(m)

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
    with torch.no_grad():
        net(x)
    return total[0], order


@pytest.mark.parametrize("seed", range(5))
def test_macs_and_weight_bytes_match_the_extracted_network(tiny, tiny_table, seed):
    net = SuperNet(tiny).eval()
    arch = tiny.sample(random.Random(seed)) if seed > 1 else [tiny.smallest(),
                                                              tiny.largest()][seed]
    static = extract(net, arch)
    batch = 1
    x = torch.randn(batch, tiny.input_channels, tiny.input_size, tiny.input_size)
    counted, modules = _hooked_macs(static, x)
    assert table_cost(tiny, tiny_table, arch, "macs") == counted

    layers = describe_layers(tiny, arch)
    assert len(modules) == len(layers)
    expected_bytes = 0
    for module, layer in zip(modules, layers, strict=True):
        assert module.weight.numel() == OpSignature.from_shape(layer).weight_count
        expected_bytes += math.ceil(module.weight.numel() * layer.weight_bits / 8)
        expected_bytes += 4 * module.weight.shape[0]  # folded-BN or linear bias, 32 bits
    assert table_cost(tiny, tiny_table, arch, "weight_bytes") == expected_bytes
    assert sum(p.numel() for p in static.parameters()) == sum(
        layer.param_count for layer in layers)


def test_bitops_and_bytes_follow_the_bit_widths():
    s8 = OpSignature("conv", 16, 32, 3, 1, 8, 8, 8)
    s4 = s8.with_bits(4, 4)
    t = PRESETS["edgetpu"]
    assert t.costs(s4)["bitops"] * 4 == t.costs(s8)["bitops"]
    assert weight_bytes(s4) < weight_bytes(s8)
    assert activation_bytes(s4) * 2 == activation_bytes(s8)
    assert macs(s8) == 8 * 8 * 32 * 16 * 9


def test_edgetpu_runs_4_bit_at_int8_and_float_on_the_host():
    t = get_target("edgetpu")
    s8 = OpSignature("conv", 64, 64, 1, 1, 14, 8, 8)
    assert t.run_width(s8.with_bits(4, 4)) == 8
    compute_bound = OpSignature("conv", 256, 256, 3, 1, 28, 8, 8)
    assert t.costs(compute_bound.with_bits(4, 4))["latency_ms"] == pytest.approx(
        t.costs(compute_bound)["latency_ms"], rel=0.05)
    assert t.costs(s8.with_bits(32, 32))["latency_ms"] > 10 * t.costs(s8)["latency_ms"]


def test_fpga_throughput_scales_with_operand_widths():
    t = get_target("fpga")
    big = OpSignature("conv", 256, 256, 3, 1, 28, 8, 8)
    assert t.costs(big.with_bits(4, 4))["latency_ms"] < 0.3 * t.costs(big)["latency_ms"]


def test_latency_is_the_roofline_max():
    t = get_target("mcu")
    s = OpSignature("conv", 32, 64, 3, 1, 16, 8, 8)
    mem = (weight_bytes(s) + activation_bytes(s)) / t.bandwidth
    compute = macs(s) / t.peak_macs[8]
    expected = (max(mem, compute) + t.layer_overhead_s) * 1e3
    assert t.costs(s)["latency_ms"] == pytest.approx(expected)


def test_every_preset_covers_the_space(tiny):
    for name in PRESETS:
        table = build_analytic_table(tiny, name)
        table.check_covers(tiny)
        assert all(v["latency_ms"] > 0 and v["energy_mj"] > 0 for v in table.entries.values())


def test_unknown_preset_lists_the_presets():
    with pytest.raises(KeyError, match="edgetpu"):
        get_target("tpu9000")
