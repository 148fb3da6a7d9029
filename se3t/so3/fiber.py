"""``Fiber``: the structure of an SE(3)-equivariant feature, degree -> number of channels.

A feature of fiber ``{0: 32, 1: 16}`` holds, per node (or edge), 32 scalars and 16 vectors; in
code a dict ``{degree: Tensor[N, channels, 2*degree+1]}``. Every layer takes its input and output
fibers as :class:`Fiber` objects, validated here once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

__all__ = ["Fiber"]


class Fiber(Mapping):
    """Immutable mapping ``degree -> channels`` with degrees ``>= 0`` and channels ``>= 1``.

    ``Fiber({0: 6})``, ``Fiber.create(4, 32)`` (degrees 0..3 with 32 channels each). ``a + b``
    concatenates channels of shared degrees (and keeps the others): the fiber of
    ``torch.cat([x[d], y[d]], dim=1)`` per degree.
    """

    __slots__ = ("_d",)

    def __init__(self, structure: Mapping[int, int] | list[tuple[int, int]] | Fiber):
        items = structure.items() if isinstance(structure, Mapping) else structure
        d: dict[int, int] = {}
        try:
            items = list(items)
        except TypeError:
            raise ValueError(
                f"Fiber: expected a mapping degree -> channels, got {structure!r}"
            ) from None
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise ValueError(f"Fiber: bad entry {item!r} in {structure!r}")
            degree, channels = item
            for name, v, low in (("degree", degree, 0), ("channels", channels, 1)):
                if isinstance(v, bool) or not isinstance(v, int) or v < low:
                    raise ValueError(
                        f"Fiber: {name} must be an int >= {low}, got {v!r} in {structure!r}"
                    )
            if degree in d:
                raise ValueError(f"Fiber: degree {degree} given twice in {structure!r}")
            d[degree] = channels
        if not d:
            raise ValueError("Fiber: at least one degree is required")
        self._d = dict(sorted(d.items()))

    @classmethod
    def create(cls, num_degrees: int, channels: int) -> Fiber:
        """Degrees ``0 .. num_degrees-1``, each with ``channels`` channels."""
        if isinstance(num_degrees, bool) or not isinstance(num_degrees, int) or num_degrees < 1:
            raise ValueError(f"Fiber.create: num_degrees must be an int >= 1, got {num_degrees!r}")
        return cls({d: channels for d in range(num_degrees)})

    def __getitem__(self, degree: int) -> int:
        return self._d[degree]

    def __iter__(self) -> Iterator[int]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(tuple(self._d.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fiber) and self._d == other._d

    def __add__(self, other: Fiber) -> Fiber:
        out = dict(self._d)
        for d, c in other.items():
            out[d] = out.get(d, 0) + c
        return Fiber(out)

    @property
    def degrees(self) -> list[int]:
        return list(self._d)

    @property
    def channels(self) -> list[int]:
        return list(self._d.values())

    @property
    def max_degree(self) -> int:
        return max(self._d)

    @property
    def num_features(self) -> int:
        """Scalars per node: ``sum channels * (2 degree + 1)``."""
        return sum(c * (2 * d + 1) for d, c in self._d.items())

    @property
    def uniform_channels(self) -> int | None:
        """The common channel count, or None when degrees differ."""
        cs = set(self._d.values())
        return cs.pop() if len(cs) == 1 else None

    def scaled(self, divisor: int) -> Fiber:
        """Every degree's channels divided by ``divisor`` (which must divide them)."""
        bad = {d: c for d, c in self._d.items() if c % divisor}
        if bad:
            raise ValueError(f"Fiber: channels {bad} not divisible by {divisor}")
        return Fiber({d: c // divisor for d, c in self._d.items()})

    def check(self, feats: Mapping[int, object], name: str = "features") -> None:
        """Raise ValueError naming ``name`` unless ``feats`` is ``{d: [N, channels, 2d+1]}``."""
        missing = [d for d in self._d if d not in feats]
        if missing:
            raise ValueError(f"{name}: degrees {missing} missing (expected fiber {self})")
        n = None
        for d, c in self._d.items():
            x = feats[d]
            shape = tuple(getattr(x, "shape", ()))
            if len(shape) != 3 or shape[1:] != (c, 2 * d + 1) or (n is not None and shape[0] != n):
                raise ValueError(
                    f"{name}[{d}]: expected shape [{n if n is not None else 'N'}, {c}, {2 * d + 1}]"
                    f", got {list(shape)}"
                )
            n = shape[0]

    def __repr__(self) -> str:
        return "Fiber({" + ", ".join(f"{d}: {c}" for d, c in self._d.items()) + "})"
