"""A CSV of SMILES and properties; 3D conformers generated with RDKit.

Each SMILES is parsed, given explicit hydrogens, embedded with ETKDG (version 3) from the fixed
seed ``data.conformer_seed`` and relaxed with ``data.mmff_iterations`` steps of MMFF94 (UFF for
molecules MMFF has no parameters for; both counted in the build report). Every molecule uses the
same seed and one thread, so a conformer does not depend on the worker that made it or on the
number of workers: the build is deterministic. The method, seed and RDKit version are recorded
in the store (attribute ``conformers``). Bonds (and so the bond graph and the scaffold) come from
the SMILES graph. A SMILES that RDKit cannot parse or that fails to embed is a MoleculeError
naming the row, never a silent drop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from se3t.data.parse import MoleculeError
from se3t.data.sources import Molecule, bonds_of
from se3t.data.sources.xyz_dir import read_properties
from se3t.data.workers import fork_pool
from se3t.errors import InputError

__all__ = ["conformer_settings", "embed", "iter_smiles"]

_CHUNK = 8  # molecules per task sent to an embedding worker


def conformer_settings(seed: int, iterations: int) -> dict[str, Any]:
    """What the store records about how the conformers were made."""
    import rdkit

    return {
        "method": "ETKDGv3 + MMFF94 (UFF where MMFF lacks parameters)",
        "seed": int(seed),
        "mmff_iterations": int(iterations),
        "rdkit": rdkit.__version__,
    }


def embed(smiles: str, seed: int, iterations: int) -> dict[str, Any]:
    """One conformer of ``smiles``: ``{"species", "pos", "bonds", "force_field"}`` or
    ``{"error": (field, message, reason)}``."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")
    if not smiles:
        return {"error": ("smiles", "empty", "bad_smiles")}
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return {"error": ("smiles", f"{smiles!r} is not a SMILES RDKit can parse", "bad_smiles")}
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = 1
    failed = {"error": ("conformer", f"ETKDG cannot embed {smiles!r} in 3D", "embed_failed")}
    try:
        if AllChem.EmbedMolecule(mol, params) != 0:
            # a second try from random coordinates, still seeded (large rings, cages)
            params.useRandomCoords = True
            if AllChem.EmbedMolecule(mol, params) != 0:
                return failed
    except (ValueError, RuntimeError):
        return failed
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=int(iterations))
        force_field = "MMFF94"
    elif AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMolecule(mol, maxIters=int(iterations))
        force_field = "UFF"
    else:
        force_field = "none"
    return {
        "species": np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64),
        "pos": np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64),
        "bonds": bonds_of(mol),
        "force_field": force_field,
    }


def _embed_chunk(task: tuple[list[str], int, int]) -> list[dict[str, Any]]:
    smiles, seed, iterations = task
    return [embed(s, seed, iterations) for s in smiles]


def iter_smiles(
    path: str | Path,
    *,
    smiles_column: str = "smiles",
    id_column: str | None = None,
    seed: int = 42,
    iterations: int = 2000,
    processes: int = 1,
    progress: bool = True,
    limit: int | None = None,
) -> Iterator[Molecule | MoleculeError]:
    """Molecules of a SMILES CSV in row order, embedded in ``processes`` worker processes."""
    from tqdm import tqdm

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    header, rows = read_properties(path, smiles_column, "data.smiles_column", "")
    if id_column and id_column not in header:
        raise InputError(f"{path}: no column {id_column!r} (data.id_column); header {header}")
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise InputError(f"{path}: no row below the header")
    smiles = [(r.get(smiles_column) or "").strip() for r in rows]
    tasks = [(smiles[i : i + _CHUNK], seed, iterations) for i in range(0, len(smiles), _CHUNK)]
    with tqdm(total=len(rows), desc="embed", unit="mol", disable=not progress) as bar:
        if processes > 1 and len(tasks) > 1:
            with fork_pool(processes) as pool:
                results = []
                for res in pool.imap(_embed_chunk, tasks):  # imap keeps the input order
                    results.extend(res)
                    bar.update(len(res))
        else:
            results = []
            for task in tasks:
                res = _embed_chunk(task)
                results.extend(res)
                bar.update(len(res))
    for k, (row, out) in enumerate(zip(rows, results, strict=True)):
        mol_id = (row.get(id_column) or "").strip() if id_column else str(k)
        where = f"{path.name}: record {k} (line {k + 2}, id {mol_id or k})"
        if "error" in out:
            yield MoleculeError(where, *out["error"])
            continue
        props = {c: v for c, v in row.items() if c not in (smiles_column, id_column, None)}
        yield Molecule(
            k,
            mol_id or str(k),
            out["species"],
            out["pos"],
            props,
            where,
            out["bonds"],
            {"force_field": out["force_field"], "smiles": smiles[k]},
        )
