"""SDF input (se3t.data.sources.sdf): QM9 molecules written as SDF give QM9's dataset; the real
SDF files inside the RDKit wheel build, train, evaluate and predict; bad records are named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from own_helpers import (
    assert_same_dataset,
    end_to_end,
    perceived_rows,
    rdkit_sdf,
    write_sdf,
)
from rdkit import Chem

from se3t.config import DataConfig
from se3t.data import open_dataset
from se3t.data.sources.own import build_molecules
from se3t.data.sources.qm9 import QM9_TARGETS
from se3t.data.sources.sdf import iter_sdf
from se3t.errors import InputError
from se3t.eval import predict
from se3t.eval.metrics import evaluate

QM9_ELEMENTS = ["H", "C", "N", "O", "F"]


def _cfg(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), targets=kw.pop("targets", list(QM9_TARGETS)), **kw)


@pytest.mark.parametrize("v3000", [False, True])
def test_qm9_molecules_as_sdf_give_the_qm9_dataset(qm9_store, tmp_path, v3000):
    qm9 = open_dataset(qm9_store)
    rows = perceived_rows(qm9)[:60]
    sdf = write_sdf(qm9, rows, tmp_path / "qm9.sdf", v3000=v3000)
    cfg = _cfg(sdf, elements=QM9_ELEMENTS)
    build_molecules(cfg, tmp_path / "own.zarr", progress=False)
    own = open_dataset(tmp_path / "own.zarr")
    # V2000 and V3000 write 4 decimals: positions agree to half their last digit
    assert_same_dataset(qm9, own, rows, pos_atol=5.1e-5)
    assert own.encoding.bonds == "file" and own.parse_report["bonds"] == {"file": 60}


def test_cmet_ligands_build_report(tmp_path):
    cfg = _cfg(rdkit_sdf("cmet"), targets=["r_exp_dg"], units={"r_exp_dg": "kcal/mol"})
    result = build_molecules(cfg, tmp_path / "cmet.zarr", progress=False)
    store = open_dataset(tmp_path / "cmet.zarr")
    r = result["report"]
    assert (r["read"], r["kept"], r["dropped_total"], r["atoms_max"]) == (24, 24, 0, 71)
    assert store.encoding.to_dict()["symbols"] == ["H", "C", "N", "O", "F", "S", "Cl"]
    assert store.ids[0] == "CHEMBL3402753_200"  # the record's title line
    assert store.units["r_exp_dg"] == "kcal/mol"
    assert np.isfinite(store.targets).all() and store.targets.shape == (24, 1)
    store.verify()
    # a second build with the same inputs and settings does nothing
    assert build_molecules(cfg, tmp_path / "cmet.zarr", progress=False)["skipped"]


def test_egfr_all_numeric_properties_become_targets(tmp_path):
    # 365 docked ligands up to 76 atoms; SD property 'Cluster' and the OPLS energies are
    # numbers, 'MODEL.SOURCE' is text and stays out
    cfg = _cfg(rdkit_sdf("egfr"), targets=["r_mmffld_Potential_Energy-OPLS_2005"], limit=40)
    result = build_molecules(cfg, tmp_path / "egfr.zarr", progress=False)
    store = open_dataset(tmp_path / "egfr.zarr")
    assert store.target_names[0] == "r_mmffld_Potential_Energy-OPLS_2005"
    assert "MODEL.SOURCE" in result["report"]["ignored_properties"]
    assert "Cluster" in store.target_names
    assert result["report"]["kept"] == 40


def _records(path, text_of):
    sup = Chem.SDMolSupplier(str(rdkit_sdf("cmet")), removeHs=False)
    texts = [sup.GetItemText(k) for k in range(4)]
    path.write_text("".join(text_of(k, t) for k, t in enumerate(texts)))
    return path


def test_bad_records_are_dropped_and_named(tmp_path):
    def corrupt(k, text):
        lines = text.split("\n")
        if k == 1:  # a coordinate that is not a number: the atom block cannot be parsed
            lines[4] = "    xx.yyyy" + lines[4][11:]
        if k == 2:  # a property that is not a number
            i = lines.index(">  <r_exp_dg>  (1) ") if ">  <r_exp_dg>  (1) " in lines else None
            i = i if i is not None else next(n for n, s in enumerate(lines) if "r_exp_dg" in s)
            lines[i + 1] = "strong"
        if k == 3:  # the same title as record 0
            lines[0] = text.split("\n")[0].replace("_1 redocked", "")
        return "\n".join(lines)

    sdf = _records(tmp_path / "bad.sdf", corrupt)
    cfg = _cfg(sdf, targets=["r_exp_dg"])
    r = build_molecules(cfg, tmp_path / "bad.zarr", progress=False)["report"]
    assert r["kept"] == 2 and r["dropped"] == {"not_a_number": 1, "unparsable_record": 1}
    text = "\n".join(r["dropped_examples"])
    assert "bad.sdf: record 1" in text and "field 'molecule block'" in text
    assert "bad.sdf: record 2" in text and "field 'r_exp_dg'" in text and "'strong'" in text
    with pytest.raises(InputError, match=r"bad.sdf: record 1 .*molecule block"):
        build_molecules(_cfg(sdf, targets=["r_exp_dg"], strict=True), tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()  # nothing half-written


def test_duplicate_ids_and_2d_and_missing_target(tmp_path):
    sup = Chem.SDMolSupplier(str(rdkit_sdf("cmet")), removeHs=False)
    mols = [sup[k] for k in range(3)]
    flat = Chem.Mol(mols[1])
    conf = flat.GetConformer()
    for k in range(flat.GetNumAtoms()):
        p = conf.GetAtomPosition(k)
        conf.SetAtomPosition(k, (p.x, p.y, 0.0))
    conf.Set3D(False)  # a drawing: the writer marks it 2D in the header
    path = tmp_path / "dup.sdf"
    with Chem.SDWriter(str(path)) as w:
        for m in (mols[0], flat, mols[2], mols[0]):
            w.write(m)
    recs = list(iter_sdf(path))
    assert [type(x).__name__ for x in recs] == ["Molecule", "MoleculeError"] + ["Molecule"] * 2
    assert recs[1].reason == "not_3d"
    r = build_molecules(_cfg(path, targets=["r_exp_dg"]), tmp_path / "d.zarr", progress=False)
    assert r["report"]["dropped"] == {"duplicate_id": 1, "not_3d": 1}
    with pytest.raises(InputError, match=r"field 'pIC50'.*no molecule has this property"):
        build_molecules(_cfg(path, targets=["pIC50"]), tmp_path / "e.zarr", progress=False)


@pytest.mark.slow
def test_end_to_end_cmet(tmp_path):
    sdf = rdkit_sdf("cmet")
    out = end_to_end(
        tmp_path,
        [f"data.source={sdf}", "data.targets=[r_exp_dg]", "data.units.r_exp_dg=kcal/mol"],
        [sdf],
    )
    m = out["metrics"]["metrics"]["r_exp_dg"]
    assert m["unit"] == "kcal/mol" and m["count"] >= 1 and np.isfinite(m["mae"])
    pred = out["predictions"]
    assert len(pred) == 24 and pred["id"].tolist() == out["store"].ids
    assert set(pred["unit"]) == {"kcal/mol"}
    # prediction builds each molecule's graph and features as the build did: the predicted
    # test molecules equal what evaluate predicted for them (float32 model, same batches'
    # arithmetic up to the batch composition)
    evaluated = pd.read_csv(out["run"] / "predictions.csv")
    by_id = dict(zip(pred["id"], pred["prediction"], strict=True))
    tol = 1e-4 * max(1.0, float(np.abs(evaluated["prediction"]).max()))
    for mol_id, value in zip(evaluated["id"], evaluated["prediction"], strict=True):
        assert by_id[mol_id] == pytest.approx(value, abs=tol)
    ev = out["metrics"]
    assert ev["dataset_source"] == "sdf" and ev["targets"] == ["r_exp_dg"]
    # an element the model never saw (Br, in the EGFR ligands) is an error naming the molecule
    with pytest.raises(InputError, match=r"record 0 \(id ZINC02640583\).*Br \(Z=35\) was not"):
        predict(out["run"], [rdkit_sdf("egfr")], progress=False)
    # and so is evaluating on a dataset with another encoding
    sup = Chem.SDMolSupplier(str(rdkit_sdf("egfr")), removeHs=False)
    with Chem.SDWriter(str(tmp_path / "egfr.sdf")) as w:
        for k in range(30):
            m = sup[k]
            m.SetProp("r_exp_dg", m.GetProp("r_mmffld_Potential_Energy-OPLS_2005"))
            w.write(m)
    cfg = _cfg(tmp_path / "egfr.sdf", targets=["r_exp_dg"])
    build_molecules(cfg, tmp_path / "egfr.zarr", progress=False)
    with pytest.raises(InputError, match="is not the one checkpoint"):
        evaluate(out["run"], dataset=tmp_path / "egfr.zarr", progress=False)
