"""Extended XYZ (the format of MACE and NequIP datasets), read with ASE.

Each frame is one molecule: ``ase.io.iread(path, index=":", format="extxyz")``. Per-structure
properties are the scalar entries of ``atoms.info`` and of the results ASE moves into a
single-point calculator (``energy``, and any scalar ``*energy*`` key it recognises); per-atom
arrays (forces, charges) are not graph-level targets and are left out. The id is the info key
``data.id_column`` when given and present, else the frame's index.

ASE reads a file frame by frame and cannot resume after a malformed frame (bad coordinates,
wrong atom count, unknown element symbol): that is an InputError naming the file and the frame
(its index and, when the previous frames parsed, where it starts).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from se3t.data.parse import MoleculeError
from se3t.data.sources import Molecule
from se3t.errors import InputError

__all__ = ["iter_extxyz", "scalar_properties"]


def scalar_properties(atoms) -> dict:
    """Scalar per-structure properties of an ASE ``Atoms`` (info, then calculator results)."""
    props = {}
    items = list(atoms.info.items())
    calc = atoms.calc
    if calc is not None:
        items += list(getattr(calc, "results", {}).items())
    for key, value in items:
        if isinstance(value, np.ndarray):
            if value.ndim == 0 or value.size == 1:
                props[key] = value.reshape(-1)[0].item()
            continue  # vectors (stress, dipole) and per-atom arrays: not scalar targets
        if isinstance(value, (str, int, float, bool, np.integer, np.floating)):
            props[key] = value
    return props


def iter_extxyz(path: str | Path, id_key: str | None = None) -> Iterator[Molecule | MoleculeError]:
    """Molecules of an extended XYZ file, in file order."""
    # deferred: ASE is only needed for this format
    from ase.io import iread

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    frames = iread(str(path), index=":", format="extxyz")
    k = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as err:  # noqa: BLE001 - ASE raises many kinds; name file and frame
            raise InputError(
                f"{path}: record {k} (frame {k + 1}): field 'coordinates': not readable as "
                f"extended XYZ ({type(err).__name__}: {err})"
            ) from None
        props = scalar_properties(atoms)
        mol_id = str(props.pop(id_key)) if id_key and id_key in props else str(k)
        where = f"{path.name}: record {k} (id {mol_id})"
        species = np.asarray(atoms.numbers, dtype=np.int64)
        pos = np.asarray(atoms.positions, dtype=np.float64)
        if (species <= 0).any():
            a = int(np.nonzero(species <= 0)[0][0])
            yield MoleculeError(
                where,
                f"atom {a + 1} element",
                f"{atoms.get_chemical_symbols()[a]!r} is not a chemical element",
                "unknown_element",
            )
        else:
            yield Molecule(k, mol_id, species, pos, props, where)
        k += 1
    if k == 0:
        raise InputError(f"{path}: no frame (an empty extended XYZ file)")
