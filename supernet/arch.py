"""`ArchConfig`: one concrete choice per search-space decision.

Frozen and hashable so configs can key dicts and sets (families, Pareto fronts, cost caches);
JSON round-trips so every exported member says exactly what it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

Number = int | float


@dataclass(frozen=True)
class ArchConfig(Mapping[str, Number]):
    """Decision key (e.g. ``stage2.width``) → chosen value, in the space's decision order."""

    items_: tuple[tuple[str, Number], ...]

    @classmethod
    def from_dict(cls, values: Mapping[str, Number]) -> ArchConfig:
        return cls(tuple((str(k), _as_number(k, v)) for k, v in values.items()))

    def __getitem__(self, key: str) -> Number:
        for k, v in self.items_:
            if k == key:
                return v
        raise KeyError(f"{key!r} is not a decision of this config; it has {list(self)}")

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.items_)

    def __len__(self) -> int:
        return len(self.items_)

    def __le__(self, other: ArchConfig) -> bool:
        """``a <= b`` means a ⊆ b: every choice of ``a`` is at most ``b``'s.

        Choices are ordered cheapest → dearest, and a smaller width, depth or kernel uses a prefix
        (centre crop) of the larger one's weights, so this is the weight-sharing nesting test.
        """
        if set(self) != set(other):
            raise ValueError(
                f"configs have different decisions: {sorted(set(self) ^ set(other))}"
            )
        return all(self[k] <= other[k] for k in self)

    def __lt__(self, other: ArchConfig) -> bool:
        return self <= other and self != other

    def replace(self, **changes: Number) -> ArchConfig:
        """A copy with some decisions changed; keys use ``__`` for ``.`` (``stage1__width=8``)."""
        updates = {k.replace("__", "."): v for k, v in changes.items()}
        unknown = set(updates) - set(self)
        if unknown:
            raise KeyError(f"unknown decisions {sorted(unknown)}; known: {list(self)}")
        return ArchConfig.from_dict({k: updates.get(k, v) for k, v in self.items_})

    def to_dict(self) -> dict[str, Number]:
        return dict(self.items_)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"an ArchConfig JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.items_)
        return f"ArchConfig({inner})"


def _as_number(key: str, value: object) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"decision {key!r}: value must be a number, got {value!r}")
    return int(value) if float(value).is_integer() else float(value)
