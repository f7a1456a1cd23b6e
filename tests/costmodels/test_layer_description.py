"""One description of a layer: the supernet's `Layer`, which cost signatures extend."""

import dataclasses

import torch

from costmodels import OpSignature
from costmodels.targets import op_module
from supernet import describe_layers
from supernet.layers import Layer


def test_signature_fields_are_the_layer_fields_plus_the_batch():
    layer = {f.name for f in dataclasses.fields(Layer)}
    assert {f.name for f in dataclasses.fields(OpSignature)} == layer | {"batch"}


def test_shape_and_signature_agree_on_every_derived_size(tiny):
    for shape in describe_layers(tiny, tiny.largest()):
        sig = OpSignature.from_shape(shape, batch=3)
        assert sig.layer() == shape.layer() and sig.batch == 3
        assert (sig.out_size, sig.weight_count, sig.groups) == \
            (shape.out_size, shape.weight_count, shape.groups)


def test_linear_layer_pools_to_one_pixel_and_the_module_agrees():
    fc = Layer("linear", 16, 10, 0, 1, 4, activation=False)
    out = op_module(OpSignature.from_shape(fc), "relu")(torch.randn(2, 16, 4, 4))
    assert fc.out_size == 1 and out.shape == (2, 10)
