"""The basis store on the real QM9 test molecules: key, plan, build, read, mismatch, corruption,
manifests, fsspec URLs, unwritable caches, ls and gc."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from basis_helpers import build, settings, shard_files, stored_rows

from se3t.basis import (
    BasisSettings,
    basis_key,
    default_backend,
    finalize,
    gc,
    list_stores,
    open_basis,
    plan_chunks,
    precompute,
    read_manifest,
    verify,
    write_manifest,
)
from se3t.basis.codec import ShardCodec
from se3t.data import MoleculeDataset, collate
from se3t.data.store import fingerprint
from se3t.errors import InputError
from se3t.so3.basis import basis_size, compute_basis_flat


@pytest.fixture(scope="module")
def built(qm9_store, tmp_path_factory):
    """One complete store (and its manifest) shared by the read-only tests of this module."""
    cache = tmp_path_factory.mktemp("basis_cache")
    store = build(qm9_store, cache)
    manifest = cache / "run" / "basis_manifest.json"
    write_manifest(store, manifest)
    return {"cache": cache, "store": store, "manifest": manifest, "fp": fingerprint(qm9_store)}


def _open(built, **kw):
    return open_basis(
        built["manifest"], dataset_fingerprint=built["fp"], max_degree=3, dtype="float32", **kw
    )


# ---------------------------------------------------------------------------------------- key


def test_key_depends_on_values_only():
    k = basis_key("abc", 3, "float32")
    assert k == basis_key("abc", 3, "float32") and len(k) == 24
    assert (
        len(
            {
                k,
                basis_key("abd", 3, "float32"),
                basis_key("abc", 2, "float32"),
                basis_key("abc", 3, "float16"),
            }
        )
        == 4
    )
    other_code = dataclasses.replace(default_backend(), code_version="0" * 16)
    other_layout = dataclasses.replace(default_backend(), layout_version=99)
    assert basis_key("abc", 3, "float32", backend=other_code) != k
    assert basis_key("abc", 3, "float32", backend=other_layout) != k


def test_cli_key_matches_store(built, qm9_store):
    from basis_helpers import se3t

    out = se3t("basis", "key", "--dataset", str(qm9_store)).stdout.strip()
    assert Path(built["store"]).name == f"{out}.zarr"


# --------------------------------------------------------------------------------------- plan


def test_plan_keeps_molecules_whole():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 60, size=500)
    chunk_mols, row_start = plan_chunks(counts, 256)
    assert chunk_mols[0] == 0 and chunk_mols[-1] == 500
    for c in range(len(chunk_mols) - 1):
        m0, m1 = chunk_mols[c], chunk_mols[c + 1]
        assert counts[m0:m1].sum() <= 256
        # rows of the chunk's molecules are consecutive from the chunk's first row
        expect = c * 256 + np.concatenate([[0], np.cumsum(counts[m0:m1])[:-1]])
        np.testing.assert_array_equal(row_start[m0:m1], expect)
        if c + 1 < len(chunk_mols) - 1:  # greedy: the next molecule did not fit
            assert counts[m0:m1].sum() + counts[m1] > 256
    with pytest.raises(InputError, match="more than basis.chunk_edges=8"):
        plan_chunks(np.array([3, 9, 2]), 8)


# ------------------------------------------------------------------------------ build + read


@pytest.mark.parametrize("read", ["memory", "chunks"])
def test_gather_equals_basis_computed_on_the_fly(built, qm9_store, read):
    """The bases read back from Zarr equal those the model would compute from collate's edges,
    for random batches, in both read modes."""
    store = _open(built, read=read, cache_chunks=3)
    assert store.read == read
    ds = MoleculeDataset(qm9_store, split="all")
    rng = np.random.default_rng(1)
    for size in (1, 7, 64, len(ds)):
        batch = collate([ds[i] for i in rng.choice(len(ds), size=size, replace=False)])
        got = store.gather(batch.index)
        expect = compute_basis_flat(batch.edge_vec, 3)
        assert got.shape == (batch.graph.num_edges, basis_size(3)) and got.dtype == torch.float32
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)


def test_padding_rows_are_zero_and_unused(built):
    store = _open(built, read="memory")
    rows = store.rows(np.arange(store.num_molecules))
    assert len(rows) == store.num_edges == len(np.unique(rows))
    full = stored_rows(built["store"])
    unused = np.setdiff1d(np.arange(len(full)), rows)
    assert len(unused) and not full[unused].any()
    assert (full[rows, 0] != 0).all()  # the (0,0) basis is a non-zero constant


@pytest.mark.parametrize("compressor", ["blosc-lz4", "none"])
def test_float16_and_degree_settings(qm9_store, tmp_path, compressor):
    store = build(qm9_store, tmp_path, dtype="float16", max_degree=1, compressor=compressor)
    fp = fingerprint(qm9_store)
    b = open_basis(store, dataset_fingerprint=fp, max_degree=1, dtype=torch.float16)
    ds = MoleculeDataset(qm9_store, split="all")
    batch = collate([ds[i] for i in range(20)])
    got = b.gather(batch.index)
    assert got.dtype == torch.float16 and got.shape[1] == basis_size(1)
    torch.testing.assert_close(
        got.float(), compute_basis_flat(batch.edge_vec, 1), atol=2e-3, rtol=1e-3
    )
    assert verify(store, sample=200).ok


@pytest.mark.parametrize(
    "compressor,chunks_per_shard,dtype",
    [
        ("blosc-lz4", 2, "float32"),
        ("blosc-lz4", 4, "float16"),
        ("zstd", 1, "float32"),
        ("none", 2, "float64"),
        ("blosc-zstd", 2, "float32"),
        ("gzip", 2, "float32"),
    ],
)
def test_fast_shard_writer_writes_zarrs_bytes(
    qm9_store, tmp_path, monkeypatch, compressor, chunks_per_shard, dtype
):
    """The direct shard writer and reader (fast paths) against Zarr's own write and read paths
    (the reference): every shard file byte-identical, including the partial last shard (15
    chunks), and the same rows read back."""
    s = settings(compressor=compressor, chunks_per_shard=chunks_per_shard, dtype=dtype)
    fast = precompute(qm9_store, tmp_path / "fast", s, progress=False)
    real_init = ShardCodec.__init__

    def zarr_only(self, *a, **kw):
        real_init(self, *a, **kw)
        assert self.supported  # every compressor of BasisSettings has the fast path
        self.supported = False

    monkeypatch.setattr(ShardCodec, "__init__", zarr_only)
    ref = precompute(qm9_store, tmp_path / "ref", s, progress=False)
    fast_files, ref_files = shard_files(fast["store"]), shard_files(ref["store"])
    assert len(fast_files) == len(ref_files) == -(-15 // chunks_per_shard)
    for a, b in zip(fast_files, ref_files, strict=True):
        assert a.relative_to(fast["store"]) == b.relative_to(ref["store"])
        if compressor == "gzip":  # gzip headers carry the time of writing: sizes only
            assert a.stat().st_size == b.stat().st_size, a
        else:
            assert a.read_bytes() == b.read_bytes(), a
    assert not list((Path(fast["store"]) / "basis").rglob(".*"))  # no temporaries left
    reference = stored_rows(ref["store"])  # read back through Zarr
    np.testing.assert_array_equal(stored_rows(fast["store"]), reference)
    # the direct chunk reader (read=memory decodes every chunk with it) against Zarr's reader
    monkeypatch.undo()
    finalize(fast["store"])
    b = open_basis(
        fast["store"],
        dataset_fingerprint=fingerprint(qm9_store),
        max_degree=3,
        dtype=dtype,
        read="memory",
    )
    assert b._codec is not None
    np.testing.assert_array_equal(b._full.numpy(), reference)


def test_second_run_reuses_the_store(built, qm9_store):
    """Same settings and cache: nothing is recomputed (asserted through the receipt)."""
    receipt = precompute(qm9_store, built["cache"], settings(), progress=False)
    assert receipt["store"] == built["store"] and receipt["complete"]
    assert receipt["chunks_computed"] == 0 and receipt["edges_computed"] == 0
    assert receipt["chunks_reused"] == receipt["chunks_total"] > 0


def test_resume_of_an_unfinished_store_computes_only_missing(qm9_store, tmp_path):
    first = precompute(qm9_store, tmp_path, settings(), progress=False)
    files = shard_files(first["store"])
    assert len(files) == 8
    for f in files[1:4]:
        f.unlink()
    again = precompute(qm9_store, tmp_path, settings(), progress=False)
    assert again["chunks_computed"] == 6 and again["chunks_reused"] == first["chunks_computed"] - 6
    assert not again["complete"]
    finalize(again["store"])
    assert verify(again["store"], sample=100).ok


def test_shards_fill_one_store_equal_to_single_go(built, qm9_store, tmp_path):
    receipts = [
        precompute(qm9_store, tmp_path, settings(), shard=f"{i}/3", progress=False)
        for i in range(3)
    ]
    assert sum(r["chunks_computed"] for r in receipts) == 15
    assert all(r["chunks_computed"] > 0 for r in receipts)
    finalize(receipts[0]["store"])
    np.testing.assert_array_equal(stored_rows(receipts[0]["store"]), stored_rows(built["store"]))


# --------------------------------------------------------------------------- refusal: mismatch


def test_store_for_other_settings_is_never_used(built, tmp_path):
    fp = built["fp"]
    for kw, what in (
        ({"dataset_fingerprint": "f" * 64}, "dataset"),
        ({"max_degree": 2}, "max degree"),
        ({"dtype": "float16"}, "dtype"),
    ):
        args = {"dataset_fingerprint": fp, "max_degree": 3, "dtype": "float32", **kw}
        with pytest.raises(InputError, match=f"built for {what}"):
            open_basis(built["store"], **args)
        with pytest.raises(InputError, match=f"built for {what}"):
            open_basis(built["manifest"], **args)
    # whatever its path: a copy under another name is refused just the same
    moved = tmp_path / "renamed.zarr"
    shutil.copytree(built["store"], moved)
    with pytest.raises(InputError, match="built for dataset"):
        open_basis(moved, dataset_fingerprint="0" * 64, max_degree=3, dtype="float32")
    other_code = dataclasses.replace(default_backend(), code_version="0" * 16)
    with pytest.raises(InputError, match="code_version"):
        open_basis(moved, dataset_fingerprint=fp, max_degree=3, dtype="float32", backend=other_code)


def test_incomplete_store_is_refused(qm9_store, tmp_path):
    receipt = precompute(qm9_store, tmp_path, settings(), shard="0/2", progress=False)
    fp = fingerprint(qm9_store)
    with pytest.raises(InputError, match=r"incomplete \(4 of 8 shards"):
        open_basis(receipt["store"], dataset_fingerprint=fp, max_degree=3, dtype="float32")
    with pytest.raises(InputError, match=r"incomplete: 4 of 8 shards missing \(basis/c/4/0"):
        finalize(receipt["store"])
    assert not verify(receipt["store"], sample=0).ok


def test_missing_store_and_bad_manifest(built, tmp_path):
    args = {"dataset_fingerprint": built["fp"], "max_degree": 3, "dtype": "float32"}
    with pytest.raises(InputError, match="does not exist"):
        open_basis(tmp_path / "nope.zarr", **args)
    with pytest.raises(InputError, match="does not exist"):
        open_basis(tmp_path / "nope.json", **args)
    edited = json.loads(Path(built["manifest"]).read_text())
    edited["store"] = str(tmp_path / "elsewhere.zarr")
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(InputError, match="manifest_sha256"):
        read_manifest(tmp_path / "edited.json")


# ------------------------------------------------------------------------ refusal: corruption


def _corrupt_copy(built, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(built["store"], copy)
    victim = copy / "basis" / "c" / "2" / "0"
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    for i in range(100, 140):
        data[i] ^= 0xFF  # flipped bytes inside the first inner chunk of shard 2
    victim.write_bytes(bytes(data))
    return copy


def test_verify_names_the_corrupt_chunk(built, tmp_path):
    copy = _corrupt_copy(built, tmp_path)
    report = verify(copy, sample=2000, seed=0)
    assert not report.ok
    assert report.bad_files == ["basis/c/2/0: sha256 differs from checksums.json"]
    assert report.bad_chunks and all("file basis/c/2/0" in b for b in report.bad_chunks)
    assert verify(built["store"], sample=2000, seed=0).ok


def test_reading_a_corrupt_chunk_fails_clearly(built, tmp_path):
    copy = _corrupt_copy(built, tmp_path)
    args = {"dataset_fingerprint": built["fp"], "max_degree": 3, "dtype": "float32"}
    with pytest.raises(InputError, match=r"chunk 4 \(file basis/c/2/0.*corrupt"):
        open_basis(copy, read="memory", **args)
    store = open_basis(copy, read="chunks", **args)
    store.gather(torch.arange(0, 10))  # chunk 0 is fine
    bad = int(store.chunk_mols[4])
    with pytest.raises(InputError, match=r"chunk 4 \(file basis/c/2/0.*se3t basis verify"):
        store.gather(torch.tensor([bad]))


def test_store_changed_since_manifest_is_refused(built, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(built["store"], copy)
    manifest = tmp_path / "m.json"
    write_manifest(copy, manifest)
    sums = copy / "checksums.json"
    sums.chmod(0o644)
    sums.write_text(sums.read_text().replace('"finalized"', '"finalized" ', 1))
    with pytest.raises(InputError, match="changed since manifest"):
        open_basis(manifest, dataset_fingerprint=built["fp"], max_degree=3, dtype="float32")


# ------------------------------------------------------------------------------ fsspec reading


def test_read_through_fsspec_urls(built, qm9_store):
    import fsspec

    mem = fsspec.filesystem("memory")
    url = "memory://se3t-test/basis.zarr"
    mem.put(str(built["store"]), "/se3t-test/basis.zarr", recursive=True)
    try:
        ds = MoleculeDataset(qm9_store, split="all")
        batch = collate([ds[i] for i in range(0, 275, 5)])
        expect = _open(built).gather(batch.index)
        for where in (url, f"file://{built['store']}"):
            for read in ("memory", "chunks"):
                b = open_basis(
                    where, dataset_fingerprint=built["fp"], max_degree=3, dtype="float32", read=read
                )
                torch.testing.assert_close(b.gather(batch.index), expect, rtol=0, atol=0)
        assert verify(url, sample=0).ok
        mem.rm("/se3t-test/basis.zarr/checksums.json")
        with pytest.raises(InputError, match="incomplete"):
            open_basis(url, dataset_fingerprint=built["fp"], max_degree=3, dtype="float32")
    finally:
        mem.rm("/se3t-test", recursive=True)


def test_finalized_store_is_read_only(built):
    root = Path(built["store"])
    for p in [root, *root.rglob("*")]:
        assert not p.stat().st_mode & 0o222, p


# ----------------------------------------------------------------------- unwritable cache


def test_cache_that_is_a_file_fails_before_any_work(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    # the dataset does not exist: the cache error must come first, before reading anything
    with pytest.raises(InputError, match="basis cache .*is not a folder"):
        precompute(tmp_path / "missing.zarr", blocker, settings(), progress=False)


def test_immutable_cache_fails_before_any_work(qm9_store, tmp_path):
    """Root ignores permission bits; an immutable folder (chattr +i) stops root too. A store
    already complete there is still reused: a read-only shared cache serves its stores."""
    cache = tmp_path / "cache"
    build(qm9_store, cache, max_degree=1)
    if shutil.which("chattr") is None:
        pytest.skip("chattr not installed")
    if subprocess.run(["chattr", "+i", str(cache / "basis")], capture_output=True).returncode:
        pytest.skip("chattr +i not permitted here (needs CAP_LINUX_IMMUTABLE on ext4/xfs)")
    try:
        with pytest.raises(InputError, match="basis cache .* is not writable: Operation not"):
            precompute(tmp_path / "missing.zarr", cache, settings(), progress=False)
        with pytest.raises(InputError, match="basis cache .* is not writable: Operation not"):
            precompute(qm9_store, cache, settings(max_degree=2), progress=False)
        reused = precompute(qm9_store, cache, settings(max_degree=1), progress=False)
        assert reused["complete"] and reused["chunks_computed"] == 0
    finally:
        subprocess.run(["chattr", "-i", str(cache / "basis")], check=True)


# -------------------------------------------------------------------------------- ls and gc


def test_ls_and_gc(qm9_store, tmp_path):
    complete = build(qm9_store, tmp_path)
    partial = precompute(
        qm9_store, tmp_path, settings(dtype="float16"), shard="1/4", progress=False
    )["store"]
    rows = {s.key: s for s in list_stores(tmp_path)}
    assert len(rows) == 2
    info = rows[Path(complete).name[:-5]].as_dict()
    assert info["complete"] and info["dtype"] == "float32" and info["bytes_on_disk"] > 0
    assert info["created_by"] and info["dataset_fingerprint"] == fingerprint(qm9_store)
    part = rows[Path(partial).name[:-5]]
    assert not part.complete and part.units_present == 2 and part.meta["num_units"] == 8

    # young incomplete stores stay; old ones go; complete stores stay unless unreferenced
    assert gc(tmp_path, older_than_s=3600) == []
    gone = gc(tmp_path, older_than_s=3600, now=__import__("time").time() + 7200)
    assert [g["path"] for g in gone] == [partial] and not Path(partial).exists()
    assert Path(complete).exists()
    manifest = tmp_path / "runs" / "a" / "basis.json"
    write_manifest(complete, manifest)
    assert gc(tmp_path, unreferenced=True, manifests=[tmp_path / "runs"]) == []
    manifest.unlink()
    dry = gc(tmp_path, unreferenced=True, manifests=[tmp_path / "runs"], dry_run=True)
    assert [g["path"] for g in dry] == [complete] and Path(complete).exists()
    gc(tmp_path, unreferenced=True, manifests=[tmp_path / "runs"])
    assert not Path(complete).exists() and list_stores(tmp_path) == []


def test_settings_are_validated():
    with pytest.raises(InputError, match="compressor 'lzma'"):
        BasisSettings(compressor="lzma")
    with pytest.raises(InputError, match="dtype 'int8'"):
        BasisSettings(dtype="int8")


def test_random_batches_over_chunks_warn_once(built, caplog):
    store = _open(built, read="chunks", cache_chunks=2)
    with caplog.at_level("WARNING", logger="se3t.basis"):
        store.gather(torch.arange(0, 275, 3))
        store.gather(torch.arange(1, 275, 3))
    warnings = [r for r in caplog.records if "batch_sampler" in r.getMessage()]
    assert len(warnings) == 1


def test_chunk_cache_evicts_and_reuses_slots(built):
    """read=chunks keeps decoded chunks in a slab; batches that fit it are one index_select
    from the slab, with least recently used chunks evicted: same values as read=memory."""
    ref = _open(built, read="memory")
    store = _open(built, read="chunks", cache_chunks=2)
    cm = store.chunk_mols
    rng = np.random.default_rng(0)
    for pair in [(0, 1), (2, 3), (1, 2), (0, 4), (4,), (3, 0), (5, 6), (6,)]:
        mols = np.concatenate([np.arange(cm[c], cm[c + 1]) for c in pair])
        mols = rng.permutation(mols)[: max(1, len(mols) // 2)]
        torch.testing.assert_close(store.gather(mols), ref.gather(mols), rtol=0, atol=0)
        assert set(store._lru) >= set(pair) and len(store._lru) <= 2


@pytest.mark.parametrize("read", ["memory", "chunks"])
def test_gather_reuses_its_buffer_only_once_released(built, read):
    """gather's output buffer is reused for a later batch only when no tensor, view or NumPy
    array of it is alive: bases a caller still holds are never overwritten."""
    store = _open(built, read=read)
    full = _open(built, read="memory")._full

    def expect(index):
        return full.index_select(0, torch.from_numpy(store.rows(np.asarray(index))))

    a = store.gather(torch.arange(0, 20))
    b = store.gather(torch.arange(20, 40))  # a is held: another buffer
    assert a.data_ptr() != b.data_ptr()
    torch.testing.assert_close(a, expect(range(0, 20)), rtol=0, atol=0)
    view, ptr = b[:5].numpy(), b.data_ptr()
    del b
    c = store.gather(torch.arange(40, 50))  # a NumPy view of b lives: b's buffer is not reused
    assert c.data_ptr() != ptr
    np.testing.assert_array_equal(view, expect(range(20, 40))[:5].numpy())
    ptr = c.data_ptr()
    del c
    d = store.gather(torch.arange(50, 55))  # nothing holds c any more: its buffer is reused
    assert d.data_ptr() == ptr
    torch.testing.assert_close(d, expect(range(50, 55)), rtol=0, atol=0)
    torch.testing.assert_close(a, expect(range(0, 20)), rtol=0, atol=0)
