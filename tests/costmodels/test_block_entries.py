"""Block-level table entries: a whole block priced by one entry, layers where the table has none."""

import random
from pathlib import Path

import pytest

from costmodels import (
    CostTable,
    ExpectedCost,
    MissingSignatureError,
    build_analytic_table,
    table_cost,
)
from costmodels.priced import BlockSignature, block_signatures, parse_key
from supernet import SearchSpace

SPACE = Path(__file__).resolve().parents[2] / "configs" / "spaces" / "fbnet_tiny.yaml"


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_yaml(SPACE)


def block_value(sig: BlockSignature) -> float:
    """A made-up block cost that no sum of layer entries gives (so a test can tell them apart)."""
    if sig.kind == "skip":
        return 0.001 * sig.in_channels
    return 0.01 * sig.in_channels * sig.expand + 0.1 * sig.kernel + 0.3 * sig.stride + \
        0.05 * sig.residual


@pytest.fixture(scope="module")
def tables(space):
    layers = build_analytic_table(space, "edgetpu")
    blocks = {s.key: {"latency_ms": block_value(s)} for s in block_signatures(space)}
    both = {k: {"latency_ms": v["latency_ms"]} for k, v in layers.entries.items()}
    return layers, CostTable({**both, **blocks}, layers.meta)


def by_hand(space, table, arch) -> float:
    """Stem, each block that runs (its block entry), the early exit's classifier, head conv
    and the last classifier, summed (members that exit last)."""
    v = space.validate(arch)
    total = table.entries[next(k for k in table.entries if k.startswith("conv_i3_o8_k3"))][
        "latency_ms"]
    size = space.input_size
    for b in space.blocks:
        if v[b.depth] < b.index:
            continue
        cin = b.in_width if isinstance(b.in_width, int) else v[b.in_width]
        if b.run and v[b.run] == 0:
            key = f"skip_c{cin}_r{size}_b1"
        else:
            key = (f"block_i{cin}_o{v[b.width]}_e{v[b.expand]}_k{v[b.kernel]}_s{b.stride}_r{size}"
                   f"_w32_a32_b1" + ("_res" if b.residual else ""))
        total += table.entries[key]["latency_ms"]
        size = -(-size // b.stride)
        if b.name == "stage2.block2":  # the early exit after stage 2
            total += table.entries[f"linear_i12_o10_k0_s1_r{size}_w32_a32_b1"]["latency_ms"]
    head = f"conv_i{v['stage3.width']}_o32_k1_s1_r{size}_w32_a32_b1"
    fc = f"linear_i32_o10_k0_s1_r{size}_w32_a32_b1"
    return total + table.entries[head]["latency_ms"] + table.entries[fc]["latency_ms"]


def test_keys_round_trip():
    for key in ("block_i16_o24_e6_k3_s2_r32_w32_a32_b1", "block_i16_o16_e1.5_k5_s1_r8_w8_a8_b2_res",
                "skip_c16_r32_b1"):
        assert parse_key(key).key == key


def test_one_hot_expected_cost_equals_the_block_sum_exactly(space, tables):
    _, table = tables
    cost = ExpectedCost(space, table, "latency_ms")
    assert all(s.name.count(".") == 1 for s in cost.priced if s.name.startswith("stage"))
    rng = random.Random(0)
    exits_last = [a for a in (space.sample(rng) for _ in range(60)) if a["exit"] == 3]
    for arch in [space.largest(), space.smallest().replace(exit=3)] + exits_last[:30]:
        expected = cost(space.one_hot(arch)).item()
        assert expected == cost.concrete(arch) == table_cost(space, table, arch)
        assert expected == pytest.approx(by_hand(space, table, arch), rel=1e-12)


def test_without_block_entries_the_layers_price_it(space, tables):
    layers, both = tables
    rng = random.Random(1)
    arch = space.sample(rng)
    assert table_cost(space, layers, arch) != table_cost(space, both, arch)
    assert ExpectedCost(space, layers).concrete(arch) == table_cost(space, layers, arch)


def test_a_position_lacking_block_entries_falls_back_to_its_layers(space, tables):
    layers, both = tables
    # drop one block position's block entries: that position is priced by its layers
    blk = space.block("stage2.block1")
    drop = {k for k in both.entries if k.startswith("block_i8_o12_")}
    partial = CostTable({k: v for k, v in both.entries.items() if k not in drop}, both.meta)
    cost = ExpectedCost(space, partial)
    names = [s.name for s in cost.priced]
    assert blk.name not in names and f"{blk.name}.dw" in names and "stage1.block1" in names
    arch = space.largest()
    assert cost(space.one_hot(arch)).item() == table_cost(space, partial, arch)


def test_a_block_table_lacking_a_block_names_the_block_entries(space, tables):
    _, both = tables
    only_blocks = {k: v for k, v in both.entries.items() if not k.startswith(("dwconv", "conv_i8_o"))
                   or k.startswith("conv_i3")}
    one = next(k for k in only_blocks if k.startswith("block_i8_o12_"))
    del only_blocks[one]
    with pytest.raises(MissingSignatureError) as err:
        CostTable(only_blocks, both.meta).check_covers(space)
    assert one in str(err.value)
