"""Where data lives: a local folder or a URL, parsed once where a path enters (config loading,
the CLI's options, the library's entry points) and then passed around as a :class:`Location`.

A location is one of

- a local path (``results/cache``, ``/shared/cache``, or ``file:///shared/cache``, which is
  the same path);
- an object-store URL (``s3://bucket/prefix``, ``s3a://bucket/prefix``): caches that sites
  share, with ``storage_options`` (s3fs options such as ``endpoint_url``) and, for a cache, the
  local folder that holds verified copies of its stores (``basis.local_cache``);
- another fsspec URL (``memory://x``, ``gs://bucket/x``): readable through fsspec, never
  written by se3t.

Everything that used to be re-derived from a bare string at each door (is it remote, which
bucket, where its local copy goes, may we write there) is answered here, once.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from se3t.errors import InputError

__all__ = ["OBJECT_STORE_SCHEMES", "Location"]

OBJECT_STORE_SCHEMES = ("s3", "s3a")  # the object stores se3t writes to (basis caches)
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
# a scheme with one slash too few ("s3:/bucket") would otherwise read as a local folder "s3:"
_MISSPELT = re.compile(r"^(s3a?|gs|gcs|az|abfs|file|memory|https?):/?(?!/)", re.IGNORECASE)


@dataclass(frozen=True)
class Location:
    """A local folder or a URL. Build one with :meth:`parse`; ``str(location)`` is the path or
    URL itself. ``origin`` names where the value came from (``"basis.cache"``, ``"--to"``) so
    that every error about it can say which setting to change."""

    text: str  # the local path, or the URL without a trailing slash
    scheme: str = ""  # "" for a local path; "s3", "memory", ... for a URL
    origin: str = field(default="", compare=False)
    storage_options: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # for an object-store cache: the local folder its verified copies are kept in
    local_cache: Location | None = field(default=None, compare=False, repr=False)
    _checked: dict[str, Path] = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------------------ parsing

    @classmethod
    def parse(
        cls,
        value: str | os.PathLike | Location,
        origin: str = "",
        *,
        storage_options: Mapping[str, Any] | None = None,
        local_cache: str | os.PathLike | Location | None = None,
    ) -> Location:
        """``value`` as a Location; InputError (one line naming the value and ``origin``) for a
        value that is neither a path nor a URL. A Location passes through, taking the
        ``storage_options`` and ``local_cache`` given here when it has none of its own."""
        if isinstance(value, Location):
            loc = value
        else:
            loc = cls._from_text(
                os.fspath(value) if isinstance(value, os.PathLike) else value, origin
            )
        if storage_options and not loc.storage_options:
            loc = replace(loc, storage_options=dict(storage_options), _checked={})
        if local_cache is not None and loc.local_cache is None:
            cache = cls.parse(local_cache, "basis.local_cache")
            loc = replace(loc, local_cache=cache, _checked={})
        return loc

    @classmethod
    def from_config(cls, cfg: Any, key: str) -> Location:
        """The config setting ``key`` (``"data.path"``, ``"basis.cache"``, ...) as a Location
        naming its key; a ``basis.*`` location carries ``basis.storage_options`` and
        ``basis.local_cache`` (where the verified copies of an object-store cache's stores go)."""
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if section != "basis" or key == "basis.local_cache":
            return cls.parse(value, key)
        b = cfg.basis
        return cls.parse(value, key, storage_options=b.storage_options, local_cache=b.local_cache)

    @classmethod
    def _from_text(cls, value: Any, origin: str) -> Location:
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{_named(origin)}{value!r}: give a folder or a URL (scheme://...)")
        m = _URL.match(value)
        if m is None:
            if "://" in value or _MISSPELT.match(value):
                raise InputError(
                    f"{_named(origin)}{value!r} is neither a folder nor a URL of the form "
                    "scheme://bucket/path (s3://bucket/prefix)"
                )
            return cls(value, "", origin)
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme == "file":
            if not rest:
                raise InputError(f"{_named(origin)}{value!r}: the file:// URL names no folder")
            return cls(rest, "", origin)
        rest = rest.rstrip("/")
        bucket = rest.split("/")[0]
        if not rest or (
            scheme in OBJECT_STORE_SCHEMES and (not bucket or bucket.strip() != bucket)
        ):
            raise InputError(
                f"{_named(origin)}{value!r}: the URL names no bucket (give {scheme}://bucket/path)"
            )
        return cls(f"{scheme}://{rest}", scheme, origin)

    # ------------------------------------------------------------------------------ what it is

    def __str__(self) -> str:
        return self.text

    @property
    def remote(self) -> bool:
        """A URL (not a local path): read through fsspec, never written as a folder."""
        return bool(self.scheme)

    @property
    def object_store(self) -> bool:
        """An S3-compatible object store (a cache se3t can publish to and download from)."""
        return self.scheme in OBJECT_STORE_SCHEMES

    @property
    def name(self) -> str:
        return self.text.rstrip("/").rsplit("/", 1)[-1]

    @property
    def path(self) -> Path:
        """The local path; InputError naming the URL (and its setting) for a remote location."""
        if self.remote:
            raise InputError(
                f"{_named(self.origin)}{self.text!r}: this operation writes and needs a local (or "
                "shared POSIX) folder; for an s3:// cache use se3t basis precompute/finalize/"
                "publish with basis.cache set to the URL (docs/basis.md, sharing across sites)"
            )
        return Path(self.text)

    @property
    def bucket(self) -> str:
        """The bucket of a URL (``s3://BUCKET/prefix``)."""
        return self._url_parts()[0]

    @property
    def key(self) -> str:
        """The object key of a URL within its bucket (``s3://bucket/KEY``; "" for a bucket)."""
        return self._url_parts()[1]

    def _url_parts(self) -> tuple[str, str]:
        if not self.remote:
            raise InputError(f"{_named(self.origin)}{self.text!r} is a local path, not a URL")
        bucket, _, key = self.text.split("://", 1)[1].partition("/")
        return bucket, key

    # ------------------------------------------------------------------------------ paths

    def join(self, *names: str) -> Location:
        """The location ``self/NAME/...`` (same scheme, options and local cache)."""
        text = "/".join([self.text.rstrip("/"), *(n.strip("/") for n in names)])
        return replace(self, text=text, _checked={})

    def parent_of(self, marker: str) -> Location:
        """The location above the last ``/MARKER/`` in this one (``.../cache/basis/K.zarr`` ->
        ``.../cache`` for ``marker="basis"``)."""
        head, sep, _ = self.text.rstrip("/").rpartition(f"/{marker}/")
        if not sep:
            raise InputError(f"{_named(self.origin)}{self.text!r} has no /{marker}/ folder")
        return replace(self, text=head, _checked={})

    def local_copy(self) -> Location:
        """The local folder that holds verified copies of this remote cache's stores; InputError
        naming the setting when it is not set."""
        if self.local_cache is None:
            raise InputError(
                f"{_named(self.origin)}{self.text!r} is on an object store: set "
                "basis.local_cache to a local folder for its verified copies"
            )
        return self.local_cache

    # ------------------------------------------------------------------------------ writing

    def ensure_writable(self, sub: str = "", what: str = "folder") -> Path:
        """Create ``self/sub`` and prove it writable with a probe file; return that folder.

        Run before any work, so that a folder the user cannot write (read-only mount, missing
        permission, a file where the folder should be, an immutable folder, a full disk) fails at
        once with one line naming it, not after minutes of computation. Permission bits alone
        are not trusted (root ignores them): the probe really creates, writes and removes a
        file. A location checked once is not probed again (a check per door cost a probe each).
        """
        if sub in self._checked:
            return self._checked[sub]
        root = self.path
        target = root / sub if sub else root
        fix = f"set {self.origin or 'it'} to a writable folder"
        try:
            target.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as err:
            raise InputError(
                f"{what} {str(root)!r} cannot be used: {err.filename or target} is not a folder "
                f"({fix})"
            ) from err
        except OSError as err:
            raise InputError(
                f"{what} {str(root)!r} cannot be created: {err.strerror} ({err.filename}); {fix}"
            ) from err
        if not target.is_dir():
            raise InputError(f"{what} {str(root)!r}: {target} is not a folder ({fix})")
        probe = target / f".probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                os.write(fd, b"se3t")
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as err:
            raise InputError(
                f"{what} {str(root)!r} is not writable: {err.strerror} ({target}); {fix}"
            ) from err
        self._checked[sub] = target
        return target


def _named(origin: str) -> str:
    return f"{origin}: " if origin else ""
