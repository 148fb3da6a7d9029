"""Names of a package loaded on first use (PEP 562), so that importing the package stays cheap:
a profile point's fresh process must not pay for pandas and matplotlib in its peak memory, nor
the GPU benchmark need OmegaConf and Zarr."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose ``exports`` maps name -> module."""

    def getattr_(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_
