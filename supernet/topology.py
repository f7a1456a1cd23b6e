"""Which decision shapes each block: the one map from a space's decisions to its blocks.

The model, the analytic layer slots and the cost model all read a block's settings through its
`BlockKeys`, so a per-stage decision and a per-block one look the same to them: a key (or, for
the first stage's input width, a constant).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockKeys:
    """One block position: the decision key of each setting, or a constant.

    ``run`` is the key of a skip decision (0: the block is the identity, 1: it runs), None when
    the block always runs once its stage is deep enough (``depth >= index``). ``residual``: the
    block adds its input to its output (shapes allow it whatever the decisions).
    """

    name: str  # "stage2.block1"
    stage: int  # 1-based
    index: int  # 1-based within the stage
    in_width: str | int
    width: str
    expand: str
    kernel: str
    wbits: str
    abits: str
    depth: str
    run: str | None
    stride: int
    residual: bool

    @property
    def keys(self) -> tuple[str, ...]:
        """Every decision key that shapes the block (not depth, exit or run), without repeats."""
        ks = (self.in_width, self.expand, self.kernel, self.width, self.wbits, self.abits)
        return tuple(dict.fromkeys(k for k in ks if isinstance(k, str)))


def value(values, key: str | int | None, default=None):
    """A block setting's value: the decision's (concrete or `Mix`) or the constant itself."""
    if key is None:
        return default
    return values[key] if isinstance(key, str) else key
