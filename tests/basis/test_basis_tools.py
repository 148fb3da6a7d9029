"""se3t.basis.tools: the folder or object-store tools, chosen once from a Location."""

from __future__ import annotations

import pytest

from se3t.basis import cache_tools, store_tools
from se3t.basis.tools import FolderTools, ObjectStoreTools, publish_store
from se3t.errors import InputError
from se3t.location import Location

OPTIONS = {"endpoint_url": "http://127.0.0.1:9"}  # never contacted: nothing here calls the store


def _s3_cache() -> Location:
    return Location.parse(
        "s3://bucket/team", "basis.cache", storage_options=OPTIONS, local_cache="/node/cache"
    )


def test_cache_tools_by_kind(tmp_path):
    assert isinstance(cache_tools(Location.parse(tmp_path)), FolderTools)
    tools = cache_tools(_s3_cache())
    assert isinstance(tools, ObjectStoreTools) and tools.confirms_deletion
    assert (
        tools.remote.url == "s3://bucket/team" and tools.remote.endpoint == OPTIONS["endpoint_url"]
    )


def test_store_tools_follow_the_store_not_the_cache(tmp_path):
    key = "0123456789abcdef01234567"
    store, tools = store_tools(key, _s3_cache())
    assert str(store) == f"s3://bucket/team/basis/{key}.zarr"
    assert isinstance(tools, ObjectStoreTools) and str(tools.cache) == "s3://bucket/team"
    # the cache the store is in carries the options and the local copy's folder
    assert tools.cache.local_copy() == Location.parse("/node/cache")
    assert dict(tools.remote.location.storage_options) == OPTIONS
    # a local store given by its path is a folder's, whatever basis.cache says
    local = tmp_path / "elsewhere" / f"{key}.zarr"
    store, tools = store_tools(str(local), _s3_cache())
    assert store.path == local and isinstance(tools, FolderTools)
    # a store URL in another cache than basis.cache
    store, tools = store_tools(f"s3://other/x/basis/{key}.zarr", _s3_cache())
    assert str(tools.cache) == "s3://other/x" and tools.remote.bucket == "other"


def test_publish_needs_an_object_store(tmp_path):
    with pytest.raises(InputError, match=r"^--to '.*target': give an s3://bucket/prefix cache"):
        publish_store(
            "abc.zarr",
            Location.parse(tmp_path),
            Location.parse(tmp_path / "target", "--to"),
            progress=False,
        )
    (tmp_path / "basis" / "k.zarr").mkdir(parents=True)
    with pytest.raises(InputError, match=r"k.zarr' is not finalized; run se3t basis finalize"):
        publish_store(
            str(tmp_path / "basis" / "k.zarr"),
            Location.parse(tmp_path),
            _s3_cache(),
            progress=False,
        )
