"""SO(3) maths: fibers, spherical harmonics, Clebsch–Gordan tensors and TFN kernel bases."""

from se3t.so3.basis import (
    BASIS_LAYOUT_VERSION,
    basis_size,
    compute_basis,
    compute_basis_flat,
    flatten_basis,
    unflatten_basis,
)
from se3t.so3.fiber import Fiber

__all__ = [
    "BASIS_LAYOUT_VERSION",
    "Fiber",
    "basis_size",
    "compute_basis",
    "compute_basis_flat",
    "flatten_basis",
    "unflatten_basis",
]
