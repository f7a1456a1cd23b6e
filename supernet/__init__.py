"""The elastic supernet: search space, elastic ops, quantization and extraction.

Knows nothing of training or hardware; the architecture is always a `forward` argument.
"""

from supernet.arch import ArchConfig
from supernet.extract import StaticNet, extract
from supernet.layers import LayerShape, count_params, describe_layers
from supernet.mix import Mix
from supernet.model import RelaxedArch, SuperNet
from supernet.quant import FakeQuantAct, lsq_quantize, quantize_weight
from supernet.space import Decision, SearchSpace, SpaceError

__all__ = [
    "ArchConfig", "Decision", "FakeQuantAct", "LayerShape", "Mix", "RelaxedArch", "SearchSpace",
    "SpaceError", "StaticNet", "SuperNet", "count_params", "describe_layers", "extract",
    "lsq_quantize", "quantize_weight",
]
