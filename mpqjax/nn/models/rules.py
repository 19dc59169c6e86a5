"""Layer rules of a user's model: regular expressions over layer names that include, exclude and pin layers."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

__all__ = ["Rules"]


@dataclasses.dataclass(frozen=True)
class Rules:
    """Which layers are quantised and searched, and which bit-widths are pinned (regular expressions over names).

    Attributes:
        include: only layers matching one of these (all layers when empty).
        exclude: layers matching one of these stay in float (not in the table).
        bits: ``((pattern, bits), ...)``: matching layers are pinned at ``bits``.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    bits: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, include=(), exclude=(), bits: Mapping[str, int] | None = None) -> Rules:
        """Rules from lists and a ``{pattern: bits}`` mapping, each pattern checked to compile."""
        include, exclude = tuple(_as_patterns(include, "include")), tuple(_as_patterns(exclude, "exclude"))
        pinned = tuple((pattern, int(value)) for pattern, value in dict(bits or {}).items())
        _as_patterns([pattern for pattern, _ in pinned], "bits")
        quant_bits = [value for _, value in pinned]
        from mpqjax.nn.config import check_bits

        check_bits(quant_bits, [f"rule {pattern!r}" for pattern, _ in pinned])
        return cls(include, exclude, pinned)

    def kept(self, names: Sequence[str]) -> list[bool]:
        """Which of ``names`` are quantised; raises when a rule matches no name."""
        for label, patterns in (("include", self.include), ("exclude", self.exclude)):
            for pattern in patterns:
                if not any(re.fullmatch(pattern, name) for name in names):
                    raise ValueError(f"{label} rule {pattern!r} matches no layer; the layers are: {', '.join(names)}")
        return [(not self.include or any(re.fullmatch(p, name) for p in self.include))
                and not any(re.fullmatch(p, name) for p in self.exclude) for name in names]

    def pinned(self, names: Sequence[str]) -> dict[str, int]:
        """``{layer name: bits}`` of the pinned layers; raises when a rule matches no name."""
        pinned = {}
        for pattern, bits in self.bits:
            matched = [name for name in names if re.fullmatch(pattern, name)]
            if not matched:
                raise ValueError(f"bits rule {pattern!r} matches no layer; the layers are: {', '.join(names)}")
            pinned.update(dict.fromkeys(matched, bits))
        return pinned


def _as_patterns(patterns, label: str) -> list[str]:
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{label} rule {pattern!r} is not a regular expression: {error}") from None
    return patterns
