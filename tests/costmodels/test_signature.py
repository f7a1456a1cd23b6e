import random

import pytest

from costmodels.signature import (
    OpSignature,
    SignatureError,
    enumerate_signatures,
    space_fingerprint,
)
from supernet import SearchSpace, describe_layers


def test_key_format_and_parse_back(tiny):
    sig = OpSignature("conv", 16, 32, 3, 1, 28, 8, 8, 1)
    assert sig.key == "conv_i16_o32_k3_s1_r28_w8_a8_b1"
    sigs = enumerate_signatures(tiny, batch=2)
    assert len(sigs) > 100
    for s in sigs:
        assert OpSignature.parse(s.key) == s
        assert s.batch == 2


def test_projection_convs_have_no_activation(tiny):
    layers = describe_layers(tiny, tiny.largest())
    pwl = next(layer for layer in layers if layer.name.endswith(".pwl"))
    sig = OpSignature.from_shape(pwl)
    assert not sig.activation and sig.key.endswith("_noact")
    fc = OpSignature.from_shape(layers[-1])
    assert fc.kind == "linear" and not fc.key.endswith("_noact")


def test_enumeration_covers_every_member(tiny):
    sigs = enumerate_signatures(tiny)
    rng = random.Random(0)
    for arch in [tiny.largest(), tiny.smallest()] + [tiny.sample(rng) for _ in range(50)]:
        for layer in describe_layers(tiny, arch):
            assert OpSignature.from_shape(layer) in sigs


def test_bad_keys_and_fields_name_the_problem():
    with pytest.raises(SignatureError, match="not a signature key"):
        OpSignature.parse("conv_16_32")
    with pytest.raises(SignatureError, match="kind"):
        OpSignature("pool", 1, 1, 1, 1, 1)
    with pytest.raises(SignatureError, match="dwconv"):
        OpSignature("dwconv", 8, 16, 3, 1, 8)


def test_fingerprint_follows_the_layers_not_the_name(tiny):
    spec = dict(tiny.spec)
    assert space_fingerprint(SearchSpace({**spec, "name": "other"})) == space_fingerprint(tiny)
    wider = {**spec, "stem": {**spec["stem"], "channels": 12}}
    assert space_fingerprint(SearchSpace(wider)) != space_fingerprint(tiny)
