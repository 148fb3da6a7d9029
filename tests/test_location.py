"""se3t.location: folders and URLs parsed once, with what each door used to re-derive."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from se3t.config import ConfigError, load
from se3t.errors import InputError
from se3t.location import Location


def test_local_paths():
    for given in ("results/cache", Path("results/cache"), "file://results/cache"):
        loc = Location.parse(given, "basis.cache")
        assert not loc.remote and not loc.object_store
        assert loc.path == Path("results/cache") and str(loc) == "results/cache"
    assert Location.parse("file:///shared/cache").path == Path("/shared/cache")
    # a colon inside a folder name is still a folder
    assert Location.parse("runs/a:b").path == Path("runs/a:b")


def test_object_store_urls():
    loc = Location.parse("s3://team-bucket/se3t/cache/", "basis.cache")
    assert loc.remote and loc.object_store
    assert str(loc) == "s3://team-bucket/se3t/cache"  # no trailing slash
    assert (loc.bucket, loc.key) == ("team-bucket", "se3t/cache")
    assert Location.parse("S3A://b").object_store and Location.parse("s3a://b").key == ""
    store = loc.join("basis", "abc.zarr")
    assert str(store) == "s3://team-bucket/se3t/cache/basis/abc.zarr"
    assert store.name == "abc.zarr" and store.parent_of("basis") == loc
    with pytest.raises(InputError, match="'s3://b/x' has no /basis/ folder"):
        Location.parse("s3://b/x").parent_of("basis")
    with pytest.raises(InputError, match="basis.cache: '/tmp/c' is a local path, not a URL"):
        _ = Location.parse("/tmp/c", "basis.cache").bucket


def test_other_fsspec_urls_are_remote_but_not_object_stores():
    loc = Location.parse("memory://se3t-test/basis.zarr")
    assert loc.remote and not loc.object_store and loc.bucket == "se3t-test"
    assert str(Location.parse("memory:///abs/x")) == "memory:///abs/x"  # fsspec's own form
    with pytest.raises(InputError, match="'memory://': the URL names no bucket"):
        Location.parse("memory://")
    with pytest.raises(InputError, match=r"^basis.manifest: 'memory://x/y': this operation writes"):
        _ = Location.parse("memory://x/y", "basis.manifest").path


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("s3://", "the URL names no bucket"),
        ("s3:///prefix", "the URL names no bucket"),
        ("s3:/bucket/prefix", "is neither a folder nor a URL"),
        ("s3:bucket", "is neither a folder nor a URL"),
        ("://bucket/prefix", "is neither a folder nor a URL"),
        ("file://", "the file:// URL names no folder"),
        ("", "give a folder or a URL"),
        ("   ", "give a folder or a URL"),
    ],
)
def test_bad_values_name_the_value_and_the_setting(value, problem):
    with pytest.raises(InputError) as err:
        Location.parse(value, "--to")
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"--to: {value!r}") and problem in text


def test_config_rejects_a_bad_location_at_load():
    with pytest.raises(
        ConfigError, match=r"config key 'basis.cache': 's3://': the URL names no bucket"
    ):
        load(None, ["basis.cache=s3://"])
    with pytest.raises(ConfigError, match=r"config key 'data.path': 's3:/b/x' is neither"):
        load(None, ["data.path=s3:/b/x"])


def test_config_locations_carry_the_cache_settings():
    cfg = load(
        None,
        [
            "basis.cache=s3://bucket/team",
            "basis.local_cache=/node/cache",
            "basis.storage_options.endpoint_url=http://127.0.0.1:9000",
            "basis.manifest=results/basis/manifest.json",
        ],
    )
    cache = Location.from_config(cfg, "basis.cache")
    assert cache.object_store and cache.origin == "basis.cache"
    assert dict(cache.storage_options) == {"endpoint_url": "http://127.0.0.1:9000"}
    assert cache.local_copy() == Location.parse("/node/cache")
    assert cache.local_copy().origin == "basis.local_cache"
    # the cache's stores keep what the cache carries: their local copies go to the same folder
    store = cache.join("basis", "k.zarr")
    assert (
        store.local_copy() == cache.local_copy() and store.storage_options == cache.storage_options
    )
    manifest = Location.from_config(cfg, "basis.manifest")
    assert not manifest.remote and manifest.local_cache is not None
    assert Location.from_config(cfg, "data.path").local_cache is None


def test_remote_cache_without_local_copy_names_the_setting():
    with pytest.raises(InputError, match=r"^basis.cache: 's3://b/c' is on an object store: set "
                       "basis.local_cache"):  # fmt: skip
        Location.parse("s3://b/c", "basis.cache").local_copy()


def test_ensure_writable_creates_the_folder_once(tmp_path):
    loc = Location.parse(tmp_path / "cache", "basis.cache")
    target = loc.ensure_writable("basis")
    assert target == tmp_path / "cache" / "basis" and target.is_dir()
    assert list(target.iterdir()) == []  # the probe is gone
    shutil.rmtree(tmp_path / "cache")
    # checked once per Location: the doors that follow do not probe again
    assert loc.ensure_writable("basis") == target and not target.exists()
    assert Location.parse(tmp_path / "cache").ensure_writable("basis").is_dir()


def test_ensure_writable_names_the_folder_and_the_setting(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InputError) as err:
        Location.parse(tmp_path / "file", "basis.local_cache").ensure_writable("basis", "cache")
    text = str(err.value)
    assert text.startswith(f"cache {str(tmp_path / 'file')!r} cannot be used: ")
    assert "is not a folder (set basis.local_cache to a writable folder)" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root")
def test_ensure_writable_probes_instead_of_trusting_permission_bits(tmp_path):
    """Root ignores permission bits; an immutable folder stops root too, and the probe sees it."""
    folder = tmp_path / "cache"
    folder.mkdir()
    if shutil.which("chattr") is None:
        pytest.skip("chattr not installed")
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("chattr +i not permitted here")
    try:
        with pytest.raises(InputError, match=r"^folder '.*cache' is not writable: Operation not"):
            Location.parse(folder, "--cache").ensure_writable()
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_url_is_never_written_as_a_folder():
    with pytest.raises(InputError, match=r"^basis.cache: 's3://b/c': this operation writes"):
        Location.parse("s3://b/c", "basis.cache").ensure_writable("basis")
