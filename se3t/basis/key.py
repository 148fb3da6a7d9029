"""The cache's key: basis store settings, the basis backend and the store's content address.

:class:`BasisSettings` says how a store is built, :class:`BasisBackend` which basis maths fills
it; :func:`basis_key` hashes everything the stored values depend on into the name of the store
folder ``CACHE/basis/KEY.zarr`` (:func:`se3t.basis.layout.store_path`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from se3t.basis.layout import STORE_FORMAT
from se3t.choices import Compressor
from se3t.errors import InputError, Se3tError

COMPRESSORS = tuple(c.value for c in Compressor)
DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class BasisSettings:
    """How a store is built. ``max_degree`` and ``dtype`` change the values (and the key); the
    rest changes only the storage and is recorded in the store."""

    max_degree: int = 3
    dtype: str = "float32"
    compressor: str = "blosc-lz4"  # fastest to write and read; zstd is 10 % smaller
    compression_level: int | None = None
    chunk_edges: int = 4096
    chunks_per_shard: int = 8

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InputError(f"basis dtype {self.dtype!r} is not one of {list(DTYPES)}")
        if self.compressor not in COMPRESSORS:
            raise InputError(f"basis compressor {self.compressor!r} is not one of {COMPRESSORS}")
        if self.max_degree < 0 or self.chunk_edges <= 0 or self.chunks_per_shard <= 0:
            raise InputError(
                "basis settings: max_degree >= 0, chunk_edges > 0 and chunks_per_shard > 0 "
                f"required, got {self.max_degree}, {self.chunk_edges}, {self.chunks_per_shard}"
            )

    @classmethod
    def from_config(cls, basis_cfg: Any) -> BasisSettings:
        return cls(
            max_degree=int(basis_cfg.max_degree),
            dtype=str(basis_cfg.dtype),
            compressor=str(basis_cfg.compressor),
            compression_level=basis_cfg.compression_level,
            chunk_edges=int(basis_cfg.chunk_edges),
            chunks_per_shard=int(basis_cfg.chunks_per_shard),
        )


@dataclass(frozen=True)
class BasisBackend:
    """The basis maths the store precomputes with (``se3t.so3.basis`` unless injected)."""

    # (edge_vec [E,3], max_degree, dtype=None, out=None) -> [E, S]; fills ``out`` when given
    compute: Callable[..., Tensor]
    basis_size: Callable[[int], int]
    layout_version: int
    code_version: str  # hash of the code the values come from


def so3_code_version() -> str:
    """sha256 over the source of ``se3t/so3/basis.py`` (the module every stored value comes
    from) and e3nn's version: any change to the basis maths (or the package it takes spherical
    harmonics and Clebsch-Gordan tensors from) gives new keys. Conservative on purpose: a stale
    basis silently reused is worse than a recompute. Layouts derived from the flat basis at run
    time (``se3t.so3.blocks``) and ``Fiber`` are not hashed: they do not change stored values."""
    import e3nn

    from se3t.so3 import basis as so3_basis

    h = hashlib.sha256()
    h.update(b"basis.py")
    h.update(Path(so3_basis.__file__).read_bytes())
    h.update(f"e3nn={e3nn.__version__}".encode())
    return h.hexdigest()[:16]


def default_backend() -> BasisBackend:
    try:
        from se3t.so3 import basis as so3_basis
    except ImportError as err:
        raise Se3tError(f"the basis maths (se3t.so3.basis) cannot be imported: {err}") from err
    return BasisBackend(
        compute=so3_basis.compute_basis_flat,
        basis_size=so3_basis.basis_size,
        layout_version=int(so3_basis.BASIS_LAYOUT_VERSION),
        code_version=so3_code_version(),
    )


def key_fields(
    dataset_fingerprint: str, max_degree: int, dtype: str, backend: BasisBackend
) -> dict[str, Any]:
    """The fields :func:`basis_key` hashes, as recorded in the store's metadata."""
    return {
        "dataset_fingerprint": str(dataset_fingerprint),
        "max_degree": int(max_degree),
        "dtype": str(dtype),
        "basis_size": int(backend.basis_size(max_degree)),
        "layout_version": int(backend.layout_version),
        "code_version": backend.code_version,
        "store_format": STORE_FORMAT,
    }


def basis_key(
    dataset_fingerprint: str,
    max_degree: int,
    dtype: str,
    *,
    backend: BasisBackend | None = None,
) -> str:
    """The store's content address: sha256 (24 hex digits) of everything the stored values
    depend on: the dataset fingerprint, max degree, dtype, the basis layout version, the basis
    code's version and this store's format. Compressor and chunking are not in it: they change
    the bytes, never the values."""
    fields_ = key_fields(dataset_fingerprint, max_degree, dtype, backend or default_backend())
    blob = json.dumps(fields_, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


# the recorded fields that must match for an existing store to be this key's store
KEY_CHECK = (
    "key",
    "dataset_fingerprint",
    "max_degree",
    "dtype",
    "basis_size",
    "layout_version",
    "code_version",
)


def dtype_name(dtype: str | torch.dtype) -> str:
    """The name (``"float32"``) of a basis dtype given as a name or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        for name, dt in DTYPES.items():
            if dt == dtype:
                return name
        raise InputError(f"basis dtype {dtype} is not one of {list(DTYPES)}")
    return str(dtype)
