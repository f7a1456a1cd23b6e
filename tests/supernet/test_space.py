import copy
import json
import random

import pytest

from supernet import ArchConfig, SearchSpace, SpaceError

BASE = {
    "name": "t",
    "input_channels": 1,
    "input_size": 16,
    "num_classes": 3,
    "stem": {"channels": 8},
    "exits": [1],
    "stages": [
        {"arch": "ir_r2_k5_s2_e4_c12", "widths": [8, 12], "depths": [1, 2],
         "kernel_sizes": [3, 5], "expand_ratios": [2, 4], "weight_bits": [4, 32]},
        {"stride": 1, "widths": [16], "depths": [1], "kernel_sizes": [3], "expand_ratios": [3]},
    ],
}


def spec_with(**changes):
    spec = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = spec
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[int(leaf) if leaf.isdigit() else leaf] = value
    return spec


def test_decisions_have_stable_keys_and_ordered_choices():
    space = SearchSpace(BASE)
    assert space.keys[:6] == tuple(f"stage1.{k}" for k in
                                   ("width", "depth", "expand", "kernel", "wbits", "abits"))
    assert space.keys[-1] == "exit"
    assert space.decision("stage1.kernel").choices == (3, 5)
    assert space.decision("stage1.wbits").choices == (4, 32)
    assert space.decision("stage2.abits").choices == (32,)  # default: float
    assert space.decision("exit").choices == (1, 2)  # the last stage always has an exit
    for d in space.decisions:
        assert list(d.choices) == sorted(d.choices)


def test_arch_string_is_decoded_by_timm_and_gives_the_largest_choice():
    space = SearchSpace(spec_with(stages__0={"arch": "ir_r3_k5_s2_e6_c24"}))
    assert space.largest()["stage1.depth"] == 3
    assert space.largest()["stage1.kernel"] == 5
    assert space.largest()["stage1.expand"] == 6
    assert space.largest()["stage1.width"] == 24
    assert space.stages[0].stride == 2


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"stages__0__bogus": 1}, "stages[0]: unknown key(s) ['bogus']"),
    ({"colour": "red"}, "space: unknown key(s) ['colour']"),
    ({"stages__0__widths": []}, "stages[0].widths: must be a non-empty list"),
    ({"stages__0__widths": [12, 8]}, "stages[0].widths: choices must be strictly increasing"),
    ({"stages__0__widths": [0, 12]}, "stages[0].widths: choices must be positive integers"),
    ({"stages__0__widths": [8, 10]}, "the largest choice 10 must equal the arch string's 12"),
    ({"stages__1__weight_bits": [1, 8]}, "stages[1].weight_bits: bit-widths must lie in 2..32"),
    ({"stages__1__act_bits": [8, 64]}, "stages[1].act_bits: bit-widths must lie in 2..32"),
    ({"exits": [3]}, "exits: 3 is not a stage; stages are numbered 1..2"),
    ({"stages__1__kernel_sizes": [4]}, "kernel sizes must be odd, got 4"),
    ({"stages__0__arch": "ds_r1_k3_s1_c16"}, "only inverted-residual"),
    ({"stages__0__arch": "ir_r2_k3_s2_e4_c12_se0.25"}, "squeeze-excite"),
    ({"stages__1__stride": 0}, "stages[1].stride: must be a positive integer, got 0"),
    ({"stem": {"channels": -4}}, "stem.channels: must be a positive integer, got -4"),
])
def test_bad_spec_names_the_field_and_value(changes, fragment):
    with pytest.raises(SpaceError) as err:
        SearchSpace(spec_with(**changes))
    assert fragment in str(err.value)


def test_missing_yaml_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        SearchSpace.from_yaml(tmp_path / "nope.yaml")


def test_largest_smallest_sample_are_valid_members(tiny_space):
    rng = random.Random(0)
    for arch in [tiny_space.largest(), tiny_space.smallest()] + [
        tiny_space.sample(rng) for _ in range(20)
    ]:
        assert tiny_space.validate(arch) is arch
        assert tiny_space.smallest() <= arch <= tiny_space.largest()


def test_sampling_is_reproducible_from_a_seed(tiny_space):
    a = [tiny_space.sample(random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]
    assert len({tiny_space.sample(random.Random(s)) for s in range(20)}) > 10


def test_config_from_another_space_is_rejected(tiny_space):
    arch = tiny_space.largest()
    with pytest.raises(SpaceError, match=r"stage1.width=99 is not one of \[8, 12\]"):
        tiny_space.validate(arch.replace(stage1__width=99))
    other = ArchConfig.from_dict({**arch.to_dict(), "stage9.width": 4})
    with pytest.raises(SpaceError, match=r"unknown decisions \['stage9.width'\]"):
        tiny_space.validate(other)


def test_relaxed_arch_with_wrong_length_is_rejected(tiny_space):
    probs = tiny_space.one_hot(tiny_space.largest())
    probs["stage1.wbits"] = probs["stage1.wbits"][:2]
    with pytest.raises(SpaceError, match="stage1.wbits: expected 3 probabilities"):
        tiny_space.resolve(probs)


def test_arch_config_json_round_trip_and_hashing(fmnist_space):
    rng = random.Random(1)
    archs = [fmnist_space.sample(rng) for _ in range(10)]
    for a in archs:
        b = ArchConfig.from_json(a.to_json())
        assert b == a and hash(b) == hash(a)
        assert json.loads(a.to_json()) == a.to_dict()
    assert len({*archs, *archs}) == len(set(archs))


def test_nesting_order(tiny_space):
    small, large = tiny_space.smallest(), tiny_space.largest()
    mid = small.replace(stage1__width=12)
    assert small <= mid <= large and small < large
    assert not large <= small
    assert not mid <= small.replace(stage2__depth=2)  # incomparable configs
    assert not small.replace(stage2__depth=2) <= mid
