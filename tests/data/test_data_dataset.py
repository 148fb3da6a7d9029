"""MoleculeDataset, splits, standardization, collate (against a per-molecule reference), loaders and
read_molecule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from se3t.config import DataConfig
from se3t.data import MoleculeDataset, collate, make_loader, read_molecule
from se3t.data.sources.qm9 import QM9_TARGETS
from se3t.data.splits import split_indices, split_sizes
from se3t.data.store import open_dataset
from se3t.errors import InputError
from se3t.graph import Batch

QM9 = Path(__file__).parent / "qm9"


# ----------------------------------------------------------------------------- splits


def test_full_qm9_uses_nvidias_recipe():
    assert split_sizes(130_831) == (100_000, 130_831 - 100_000 - 13_083, 13_083)


def test_subset_uses_fractions():
    assert split_sizes(275) == (220, 28, 27)
    assert split_sizes(1000, train_fraction=0.5, test_fraction=0.2) == (500, 300, 200)


def test_splits_match_torch_random_split():
    n = 1000
    ours = split_indices(n, seed=3, n_train=600)
    theirs = torch.utils.data.random_split(
        range(n), split_sizes(n, n_train=600), generator=torch.Generator().manual_seed(3)
    )
    for name, subset in zip(("train", "val", "test"), theirs, strict=True):
        assert ours[name].tolist() == list(subset.indices)


def test_splits_deterministic_disjoint_covering():
    a, b = split_indices(275, seed=0), split_indices(275, seed=0)
    c = split_indices(275, seed=1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["train"], c["train"])
    allrows = np.concatenate(list(a.values()))
    assert sorted(allrows.tolist()) == list(range(275))


# ----------------------------------------------------------------------------- dataset


def test_dataset_splits_and_standardization(qm9_store):
    train = MoleculeDataset(qm9_store, "train", targets=("homo", "U0"))
    val = MoleculeDataset(qm9_store, "val", targets=("homo", "U0"))
    test = MoleculeDataset(qm9_store, "test", targets=("homo", "U0"))
    every = MoleculeDataset(qm9_store, "all", targets=("homo", "U0"))
    assert (len(train), len(val), len(test), len(every)) == (220, 28, 27, 275)
    assert not set(train.indices) & set(val.indices) and not set(val.indices) & set(test.indices)
    # mean/std are the training split's, shared by every split
    for ds in (val, test, every):
        torch.testing.assert_close(ds.mean, train.mean)
        torch.testing.assert_close(ds.std, train.std)
    y = torch.stack([torch.from_numpy(train[i].y) for i in range(len(train))])
    torch.testing.assert_close(y.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    # de-standardizing gives the stored values back, in eV
    raw = torch.from_numpy(val.target_values()).float()
    yv = torch.stack([torch.from_numpy(val[i].y) for i in range(len(val))])
    torch.testing.assert_close(val.destandardize(yv), raw, rtol=1e-5, atol=1e-3)
    assert train.units == {"homo": "eV", "U0": "eV"}
    assert -8.5 < float(train.mean[0]) < -5.5  # homo, eV


def test_sample_is_the_store_row(qm9_store):
    ds = MoleculeDataset(qm9_store, "val")
    s = open_dataset(qm9_store)
    item = ds[3]
    r = int(ds.indices[3])
    assert item.index == r and item.mol_id == int(s.mol_id[r])
    m = s.molecule(r)
    np.testing.assert_array_equal(item.pos, m["pos"])
    np.testing.assert_array_equal(item.src, m["src"])


def test_from_config(qm9_store):
    cfg = DataConfig(path=str(qm9_store), targets=["lumo", "gap"], split_seed=2)
    ds = MoleculeDataset.from_config(cfg, "test")
    assert ds.targets == ("lumo", "gap") and len(ds) == 27
    np.testing.assert_array_equal(ds.indices, split_indices(275, seed=2)["test"])


def test_from_config_rejects_another_graph(qm9_store):
    cfg = DataConfig(path=str(qm9_store), graph="radius", cutoff=5.0)
    with pytest.raises(InputError, match="built with graph=bond but config key 'data.graph'"):
        MoleculeDataset.from_config(cfg, "train")


def test_bad_target_and_split(qm9_store):
    with pytest.raises(InputError, match="target 'homo2'"):
        MoleculeDataset(qm9_store, "train", targets=("homo2",))
    with pytest.raises(ValueError, match="split must be"):
        MoleculeDataset(qm9_store, "training")


# ----------------------------------------------------------------------------- collate


def _reference_collate(samples) -> dict:
    """Slow per-molecule, per-atom, per-edge construction: the reference for collate."""
    zs = (1, 6, 7, 8, 9)
    nodes, edges, src, dst, pos, node_graph = [], [], [], [], [], []
    base = 0
    for g, s in enumerate(samples):
        for k, z in enumerate(s.species.tolist()):
            feat = [0.0] * 6
            feat[zs.index(z)] = 1.0
            feat[5] = float(z)
            nodes.append(feat)
            pos.append(s.pos[k].tolist())
            node_graph.append(g)
        for i, j, t in zip(s.src.tolist(), s.dst.tolist(), s.bond_type.tolist(), strict=True):
            src.append(base + i)
            dst.append(base + j)
            edges.append([1.0 if t == c else 0.0 for c in range(4)])
        base += len(s.species)
    return {
        "node_feats": torch.tensor(nodes),
        "edge_feats": torch.tensor(edges).reshape(-1, 4),
        "src": torch.tensor(src, dtype=torch.long),
        "dst": torch.tensor(dst, dtype=torch.long),
        "pos": torch.tensor(pos),
        "node_graph": torch.tensor(node_graph, dtype=torch.long),
    }


def test_collate_matches_reference(qm9_store):
    ds = MoleculeDataset(qm9_store, "all", targets=("homo", "lumo"))
    rng = np.random.default_rng(1)
    samples = [ds[int(i)] for i in rng.permutation(len(ds))[:40]]
    batch = collate(samples)
    ref = _reference_collate(samples)
    assert isinstance(batch, Batch)
    # collation copies and offsets integers: identical to the reference on every machine
    for key in ("node_feats", "edge_feats", "pos"):
        torch.testing.assert_close(getattr(batch, key), ref[key], rtol=0, atol=0)
    torch.testing.assert_close(batch.graph.src, ref["src"], rtol=0, atol=0)
    torch.testing.assert_close(batch.graph.dst, ref["dst"], rtol=0, atol=0)
    torch.testing.assert_close(batch.graph.node_graph, ref["node_graph"], rtol=0, atol=0)
    assert batch.num_graphs == 40 and batch.graph.num_nodes == len(ref["pos"])
    assert batch.y.shape == (40, 2) and batch.y.dtype == torch.float32
    assert batch.index.tolist() == [s.index for s in samples]
    assert batch.mol_ids.tolist() == [s.mol_id for s in samples]
    assert batch.graph.src.dtype == torch.long
    # edge vectors are finite and non-zero (no coincident atoms reach the basis)
    assert (batch.edge_vec.norm(dim=1) > 0.5).all()


def test_collate_edges_follow_store_order(qm9_store):
    """The contract the basis store relies on: batch edges are the concatenation of each
    molecule's store edge range, in batch order."""
    ds = MoleculeDataset(qm9_store, "train")
    s = ds.store
    samples = [ds[i] for i in (5, 0, 17, 3)]
    batch = collate(samples)
    rows = batch.index.tolist()
    eo, ao = s.edge_offsets, s.atom_offsets
    store_src = np.concatenate([s.src[eo[r] : eo[r + 1]] for r in rows])
    first = np.repeat(
        np.cumsum([0] + [ao[r + 1] - ao[r] for r in rows])[:-1], [eo[r + 1] - eo[r] for r in rows]
    )
    np.testing.assert_array_equal(batch.graph.src.numpy(), store_src + first)
    store_vec = np.concatenate(
        [
            s.pos[ao[r] + s.dst[eo[r] : eo[r + 1]]] - s.pos[ao[r] + s.src[eo[r] : eo[r + 1]]]
            for r in rows
        ]
    )
    # one float32 subtraction per coordinate, correctly rounded (IEEE 754) on every machine
    np.testing.assert_array_equal(batch.edge_vec.numpy(), store_vec)


def test_batch_to_and_pin(qm9_store):
    ds = MoleculeDataset(qm9_store, "train")
    batch = collate([ds[i] for i in range(8)]).to("cpu")
    assert batch.pos.device.type == "cpu" and batch.graph.src.device.type == "cpu"


def test_loader_with_distributed_sampler(qm9_store):
    from torch.utils.data.distributed import DistributedSampler

    ds = MoleculeDataset(qm9_store, "train")
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(1)
        loader = make_loader(ds, batch_size=32, sampler=sampler)
        for batch in loader:
            seen.extend(batch.index.tolist())
    assert sorted(seen) == sorted(ds.indices.tolist())  # 220 divides evenly over 2 ranks


def test_loader_with_worker_processes(qm9_store):
    ds = MoleculeDataset(qm9_store, "val")
    loader = make_loader(ds, batch_size=10, shuffle=True, num_workers=1, seed=0)
    rows = [r for b in loader for r in b.index.tolist()]
    assert sorted(rows) == sorted(ds.indices.tolist())


# ----------------------------------------------------------------------------- read_molecule


def _store_sample(qm9_store, mol_id):
    ds = MoleculeDataset(qm9_store, "all")
    return ds[int(np.searchsorted(ds.store.mol_id, mol_id))]


def test_read_molecule_qm9_xyz_equals_store(qm9_store, tmp_path):
    import tarfile

    with tarfile.open(QM9 / "figshare" / "dsgdb9nsd.xyz.tar.bz2") as tar:
        text = tar.extractfile("dsgdb9nsd_000050.xyz").read()
    path = tmp_path / "dsgdb9nsd_000050.xyz"
    path.write_bytes(text)
    got = read_molecule(path)
    want = _store_sample(qm9_store, 50)
    assert got.mol_id == 50 and got.y is None and got.index is None
    for key in ("pos", "species", "src", "dst", "bond_type"):
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)
    batch = collate([got, want])
    assert batch.y is None and batch.index is None and batch.num_graphs == 2


def test_read_molecule_plain_xyz_and_sdf(qm9_store, tmp_path):
    from rdkit import Chem

    want = _store_sample(qm9_store, 50)
    symbols = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}
    lines = [str(len(want.species)), "pyrrole"]
    for z, (x, y, z_) in zip(want.species, want.pos.astype(float), strict=True):
        lines.append(f"{symbols[int(z)]} {x:.10f} {y:.10f} {z_:.10f}")
    (tmp_path / "p.xyz").write_text("\n".join(lines) + "\n")
    plain = read_molecule(tmp_path / "p.xyz")
    np.testing.assert_array_equal(plain.bond_type, want.bond_type)
    mol = Chem.MolFromXYZBlock("\n".join(lines) + "\n")
    Chem.MolToMolFile(mol, str(tmp_path / "p.sdf"))
    sdf = read_molecule(tmp_path / "p.sdf")
    np.testing.assert_array_equal(sdf.species, want.species)
    np.testing.assert_allclose(sdf.pos, want.pos, atol=1e-4)
    np.testing.assert_array_equal(sdf.src, want.src)
    np.testing.assert_array_equal(sdf.bond_type, want.bond_type)


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("a.xyz", "2\n\nO 0 0 0\nCl 1 0 0\n", "atom 2 element"),
        ("b.xyz", "2\n\nO 0 0 0\nH 0 0 0\n", "same position"),
        ("c.xyz", "3\n\nO 0 0 0\nH 1 0 0\n", "says 3 atoms"),
        ("d.xyz", "2\n\nO 0 0 0\nH one 0 0\n", "atom 2 x"),
        ("e.txt", "x", "unknown molecule format"),
        ("f.sdf", "garbage\n", "RDKit cannot read|no molecule record"),
    ],
)
def test_read_molecule_errors_name_file_and_field(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        read_molecule(path)
    assert name in str(info.value)


def test_read_molecule_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_molecule(tmp_path / "nope.xyz")


def test_all_targets_available(qm9_store):
    ds = MoleculeDataset(qm9_store, "train", targets=QM9_TARGETS)
    assert ds[0].y.shape == (12,)
