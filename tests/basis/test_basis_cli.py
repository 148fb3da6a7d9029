"""``se3t basis ...`` end to end through the command-line entry point (in process)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from se3t.basis import open_basis
from se3t.cli import main
from se3t.data.store import fingerprint

SMALL = ["basis.chunk_edges=512", "basis.chunks_per_shard=2"]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_workflow_commands(qm9_store, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    code, key, _ = _run(capsys, "basis", "key", "--dataset", str(qm9_store), *SMALL)
    key = key.strip()
    assert code == 0 and len(key) == 24

    receipts = []
    for i in range(2):  # two "cluster jobs"
        r = tmp_path / f"receipt{i}.json"
        code, out, _ = _run(
            capsys,
            "basis",
            "precompute",
            "--dataset",
            str(qm9_store),
            "--cache",
            cache,
            "--shard",
            f"{i}/2",
            "--receipt",
            str(r),
            "--quiet",
            *SMALL,
        )
        assert code == 0 and "chunks computed" in out
        receipts.append(json.loads(r.read_text()))
    assert {r["key"] for r in receipts} == {key}
    assert sum(r["chunks_computed"] for r in receipts) == 15

    code, out, _ = _run(capsys, "basis", "ls", "--cache", cache)
    assert code == 0 and key in out and "8/8 shards" in out

    manifest = tmp_path / "run" / "basis.json"
    code, out, _ = _run(
        capsys, "basis", "finalize", key, "--cache", cache, "--manifest", str(manifest), "--quiet"
    )
    assert code == 0 and "read-only" in out
    record = json.loads(manifest.read_text())
    assert record["key"] == key and record["settings"]["max_degree"] == 3
    store = open_basis(
        manifest, dataset_fingerprint=fingerprint(qm9_store), max_degree=3, dtype="float32"
    )
    assert store.num_molecules == 275

    code, out, _ = _run(capsys, "basis", "verify", key, "--cache", cache, "--sample", "300")
    assert code == 0 and "OK" in out and "300 edges recomputed" in out
    code, out, _ = _run(capsys, "basis", "ls", "--cache", cache, "--json")
    assert json.loads(out)[0]["complete"] is True

    # a rerun with the same settings and cache reuses the store
    r = tmp_path / "again.json"
    code, out, _ = _run(
        capsys,
        "basis",
        "precompute",
        "--dataset",
        str(qm9_store),
        "--cache",
        cache,
        "--receipt",
        str(r),
        "--quiet",
        *SMALL,
    )
    assert code == 0 and json.loads(r.read_text())["chunks_computed"] == 0

    # verify names a corrupt file and exits 1
    bad = tmp_path / "bad.zarr"
    shutil.copytree(record["store"], bad)
    victim = bad / "basis" / "c" / "5" / "0"
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    code, out, _ = _run(capsys, "basis", "verify", str(bad), "--sample", "0")
    assert code == 1 and "BAD basis/c/5/0" in out

    # gc: nothing stale; the store referenced by the manifest stays
    code, out, _ = _run(
        capsys,
        "basis",
        "gc",
        "--cache",
        cache,
        "--unreferenced",
        "--manifests",
        str(manifest.parent),
    )
    assert code == 0 and "removed 0 store(s)" in out
    assert Path(record["store"]).exists()


def test_user_errors_are_one_line(qm9_store, tmp_path, capsys):
    code, _, err = _run(
        capsys, "basis", "finalize", "0123456789abcdef01234567", "--cache", str(tmp_path)
    )
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    code, _, err = _run(
        capsys,
        "basis",
        "precompute",
        "--dataset",
        str(qm9_store),
        "--shard",
        "3/2",
        "--cache",
        str(tmp_path),
    )
    assert code == 2 and "--shard 3/2" in err
    code, _, err = _run(capsys, "basis", "gc", "--cache", str(tmp_path), "--older-than", "soon")
    assert code == 2 and "--older-than 'soon'" in err
    code, _, err = _run(capsys, "basis", "key", "--dataset", str(qm9_store), "basis.dtype=int4")
    assert code == 2 and "basis.dtype" in err


def test_help_explains_every_action(capsys):
    for action in ("key", "precompute", "finalize", "verify", "ls", "gc"):
        with pytest.raises(SystemExit) as exit_:
            main(["basis", action, "--help"])
        assert exit_.value.code == 0
        assert "usage: se3t basis " + action in capsys.readouterr().out
