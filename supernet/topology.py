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

    ``run`` is the key of a skip decision (0: the block is skipped, 1: it runs), None when
    the block always runs once its stage is deep enough (``depth >= index``); a skipped block is
    the identity, or a 1x1 conv with the stride where the identity does not fit
    (``skip_conv``). ``residual``: the block adds its input to its output (shapes allow it
    whatever the decisions). ``dense`` is the key of a grouped-convs decision (0: both 1x1 convs
    in ``groups`` groups, 1: dense), which applies only at expansion ``grouped_expand``.
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
    skip_conv: bool = False
    dense: str | None = None
    groups: int = 1
    grouped_expand: float | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """Every decision key that shapes the block (not depth, exit or run), without repeats."""
        ks = (self.in_width, self.expand, self.kernel, self.width, self.wbits, self.abits,
              self.dense)
        return tuple(dict.fromkeys(k for k in ks if isinstance(k, str)))


def block_groups(keys: BlockKeys, dense, expand) -> int:
    """The group count of a block's 1x1 convs at concrete ``dense`` and ``expand`` values."""
    if keys.dense is None or int(dense) or expand != keys.grouped_expand:
        return 1
    return keys.groups


def value(values, key: str | int | None, default=None):
    """A block setting's value: the decision's (concrete or `Mix`) or the constant itself."""
    if key is None:
        return default
    return values[key] if isinstance(key, str) else key
