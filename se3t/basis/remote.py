"""Basis caches on S3-compatible object stores: the connection, its errors, and the few object
operations the publisher, the local read-through cache and the cache tools need.

A remote cache is ``basis.cache: s3://bucket/prefix``; its stores are ``prefix/basis/KEY.zarr/``
with the same objects as a local store (``zarr.json``, ``basis/c/U/0`` shard files, ...).
``checksums.json`` is written last and is the one object that makes a store visible.

Credentials and region come from where every AWS tool finds them (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``~/.aws``, instance
roles); ``basis.storage_options`` adds what the URL cannot say, such as the endpoint of a MinIO
or Ceph service. Secrets in ``storage_options`` are refused (:func:`check_storage_options`):
the resolved config is saved beside every output, and nothing secret may be written there.

Every call goes through :func:`s3_errors`, which turns botocore's and aiohttp's exceptions into
one :class:`~se3t.errors.InputError` that names the URL and says what to fix.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from se3t.basis.claims import alive, who
from se3t.errors import InputError
from se3t.location import Location

__all__ = [
    "LEASE_DIR",
    "RemoteCache",
    "check_storage_options",
    "s3_errors",
]

LEASE_DIR = ".leases"  # KEY.zarr/.leases/HOST-PID-ID.json: a reader or writer at work (see gc)
LEASE_TTL_S = 3600.0  # a lease not renewed for an hour belongs to a dead process


def check_storage_options(options: Mapping[str, Any] | None) -> dict:
    """A plain dict of ``options``; InputError when one of them holds a secret (credentials
    belong in the AWS environment variables or profiles, never in a config that se3t saves)."""
    from se3t.config import secret_storage_problem

    opts = dict(options or {})
    if problem := secret_storage_problem(opts):
        raise InputError(problem)
    return opts


def _root_cause(err: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _explain(err: BaseException, url: str, endpoint: str | None) -> str:
    """One line saying what went wrong with ``url`` and what to do about it."""
    names = {type(e).__name__ for e in _root_cause(err)}
    text = " ".join(str(e) for e in _root_cause(err))
    codes = set()
    for e in _root_cause(err):
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            codes.add(str(resp.get("Error", {}).get("Code", "")))
    where = endpoint or "the default AWS endpoint"
    if names & {"NoCredentialsError", "PartialCredentialsError"} or "Unable to locate cred" in text:
        return (
            "no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE)"
        )
    # by the error's type and code, never by searching the message for "403": the message
    # holds the endpoint URL, whose port may contain those digits (127.0.0.1:34033)
    if (
        codes & {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"}
        or "PermissionError" in names
        or any(w in text for w in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"))
    ):
        return (
            "access denied: the credentials are wrong or lack permission (check "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
        )
    if "NoSuchBucket" in codes or "NoSuchBucket" in text or "bucket does not exist" in text:
        return f"bucket {Location.parse(url).bucket!r} does not exist at {where}"
    if names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ConnectionRefusedError",
        "ReadTimeoutError",
    } or ("Could not connect" in text or "Connect timeout" in text):
        return (
            f"cannot reach the object store at {where} (check basis.storage_options.endpoint_url "
            "and the network)"
        )
    last = _root_cause(err)[-1]
    return f"{type(last).__name__}: {str(last).splitlines()[0] if str(last) else ''}".strip()


@contextlib.contextmanager
def s3_errors(
    url: str | Location, endpoint: str | None = None, what: str = "basis cache"
) -> Iterator[None]:
    """Turn any failure of an object-store call into an InputError naming ``url``."""
    url = str(url)
    try:
        yield
    except InputError:
        raise
    except FileNotFoundError:
        raise  # callers decide what a missing object means
    except Exception as err:
        raise InputError(f"{what} {url!r}: {_explain(err, url, endpoint)}") from None


def _md5_b64(data: bytes) -> tuple[str, str]:
    d = hashlib.md5(data, usedforsecurity=False).digest()
    return d.hex(), base64.b64encode(d).decode()


@dataclass
class ObjectInfo:
    size: int
    etag: str  # md5 hex of a single-part upload (the server checked Content-MD5 on receipt)
    sha256: str | None  # the uploader's sha256, from the object's metadata
    modified: float


class RemoteCache:
    """A basis cache on an S3-compatible object store (``s3://bucket/prefix``).

    Holds one ``s3fs.S3FileSystem`` (no listing cache: object stores change under us) and
    does every object operation through ``head_object`` / ``put_object`` / ``get_object``
    itself, so conditional writes (``If-None-Match: *``) and ``Content-MD5`` are available.
    """

    def __init__(
        self, url: str | Location, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.location = Location.parse(url, storage_options=storage_options)
        if not self.location.object_store:
            raise InputError(f"{str(url)!r} is not an s3:// URL")
        self.url = str(self.location)
        opts = check_storage_options(self.location.storage_options)
        self.endpoint: str | None = opts.get("endpoint_url") or (
            opts.get("client_kwargs", {}) or {}
        ).get("endpoint_url")
        opts.setdefault("use_listings_cache", False)
        opts.setdefault("skip_instance_cache", True)
        cfg = dict(opts.pop("config_kwargs", {}) or {})
        cfg.setdefault("connect_timeout", 5)
        cfg.setdefault("read_timeout", 60)
        cfg.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
        try:
            import s3fs  # deferred: an optional dependency (pip install 'se3t[s3]')
        except ImportError as err:
            raise InputError(
                f"basis cache {self.url!r} needs s3fs: pip install 's3fs' (or 'se3t[s3]')"
            ) from err
        with s3_errors(self.url, self.endpoint):
            self.fs = s3fs.S3FileSystem(config_kwargs=cfg, **opts)
        # few quick retries (s3fs's own loop, on top of botocore's): an unreachable endpoint
        # is reported in seconds, not minutes
        self.fs.retries = 2
        self.bucket, self.prefix = self.location.bucket, self.location.key
        self._conditional: bool | None = None  # does the server honour If-None-Match?

    # ---------------------------------------------------------------------------- addresses

    def key_of(self, url: str | Location) -> str:
        """The object key of ``s3://bucket/KEY`` (within this cache's bucket)."""
        where = Location.parse(url)
        if where.bucket != self.bucket:
            raise InputError(f"{str(url)!r} is not in bucket {self.bucket!r} of {self.url!r}")
        return where.key

    def join(self, store_url: str | Location, name: str) -> str:
        return f"{str(store_url).rstrip('/')}/{name}"

    def _call(self, method: str, url: str, **kw: Any) -> Any:
        with s3_errors(url, self.endpoint):
            return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key_of(url), **kw)

    # ---------------------------------------------------------------------------- objects

    def head(self, url: str) -> ObjectInfo | None:
        """The object's size, ETag and sha256 metadata; None when it does not exist."""
        try:
            r = self._call("head_object", url)
        except FileNotFoundError:
            return None
        meta = {str(k).lower(): v for k, v in (r.get("Metadata") or {}).items()}
        modified = r.get("LastModified")
        return ObjectInfo(
            size=int(r["ContentLength"]),
            etag=str(r.get("ETag", "")).strip('"'),
            sha256=meta.get("sha256"),
            modified=modified.timestamp() if modified is not None else 0.0,
        )

    def get(self, url: str) -> bytes | None:
        """The object's bytes; None when it does not exist."""
        try:
            with s3_errors(url, self.endpoint):
                return self.fs.cat_file(f"{self.bucket}/{self.key_of(url)}")
        except FileNotFoundError:
            return None

    def put(
        self,
        url: str,
        data: bytes,
        *,
        if_absent: bool,
        metadata: Mapping[str, str] | None = None,
    ) -> bool:
        """Upload ``data`` with ``Content-MD5`` (the server refuses a body damaged in transit)
        and a ``sha256`` metadata entry. With ``if_absent`` the write is conditional
        (``If-None-Match: *``): False when the object already existed (another writer won).

        Servers that ignore the condition overwrite; callers stay correct because every
        object se3t writes under one key is either identical or checked after the write."""
        md5_hex, md5_b64 = _md5_b64(data)
        meta = {"sha256": hashlib.sha256(data).hexdigest(), **(metadata or {})}
        kw: dict[str, Any] = {"Body": data, "ContentMD5": md5_b64, "Metadata": meta}
        if if_absent:
            kw["IfNoneMatch"] = "*"
        try:
            with s3_errors(url, self.endpoint):
                try:
                    r = self.fs.call_s3(
                        "put_object", Bucket=self.bucket, Key=self.key_of(url), **kw
                    )
                except Exception as err:
                    if _precondition_failed(err):
                        self._conditional = True
                        return False
                    raise
        except FileNotFoundError as err:  # s3fs maps NoSuchBucket on writes to this
            raise InputError(
                f"basis cache {self.url!r}: {_explain(err, self.url, self.endpoint)}"
            ) from None
        etag = str(r.get("ETag", "")).strip('"')
        if etag and etag != md5_hex:
            raise InputError(f"basis cache {url!r}: upload stored ETag {etag}, expected {md5_hex}")
        return True

    def delete(self, urls: list[str]) -> None:
        for i in range(0, len(urls), 1000):
            batch = urls[i : i + 1000]
            if not batch:
                continue
            with s3_errors(batch[0], self.endpoint):
                self.fs.call_s3(
                    "delete_objects",
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.key_of(u)} for u in batch], "Quiet": True},
                )

    def _pages(self, url: str, **kw: Any) -> Iterator[dict[str, Any]]:
        """The pages of ``list_objects_v2`` under ``url/``."""
        kw.update(Bucket=self.bucket, Prefix=self.key_of(url).rstrip("/") + "/")
        while True:
            with s3_errors(url, self.endpoint):
                r = self.fs.call_s3("list_objects_v2", **kw)
            yield r
            if not r.get("IsTruncated"):
                return
            kw["ContinuationToken"] = r.get("NextContinuationToken")

    def list(self, url: str) -> dict[str, ObjectInfo]:
        """Every object under ``url/`` (recursive): name relative to ``url`` -> size, ETag and
        modification time (no sha256: listing does not return metadata)."""
        skip = len(self.key_of(url).rstrip("/") + "/")
        return {
            o["Key"][skip:]: ObjectInfo(
                size=int(o["Size"]),
                etag=str(o.get("ETag", "")).strip('"'),
                sha256=None,
                modified=o["LastModified"].timestamp(),
            )
            for r in self._pages(url)
            for o in r.get("Contents", []) or []
        }

    def children(self, url: str) -> list[str]:
        """The 'folders' directly under ``url/`` (names, no slash)."""
        skip = len(self.key_of(url).rstrip("/") + "/")
        return [
            p["Prefix"][skip:].rstrip("/")
            for r in self._pages(url, Delimiter="/")
            for p in r.get("CommonPrefixes", []) or []
        ]

    def check_bucket(self) -> None:
        """Fail now, naming the URL, when the bucket is missing, the credentials are wrong or the
        endpoint cannot be reached (before any work is done)."""
        try:
            with s3_errors(self.url, self.endpoint):
                self.fs.call_s3("head_bucket", Bucket=self.bucket)
        except FileNotFoundError:
            raise InputError(
                f"basis cache {self.url!r}: bucket {self.bucket!r} does not exist at "
                f"{self.endpoint or 'the default AWS endpoint'}"
            ) from None
        # HEAD on a bucket carries no error body: a wrong secret shows only on a signed listing
        self.list(f"{self.url}/basis")

    # ---------------------------------------------------------------------------- leases

    @contextlib.contextmanager
    def lease(self, store_url: str, what: str, ttl_s: float = LEASE_TTL_S) -> Iterator[None]:
        """Hold a lease on a store while reading or writing it: ``KEY.zarr/.leases/ID.json``
        with an expiry, renewed every ``ttl_s / 3``, removed at the end. ``gc`` never removes
        a store with an unexpired lease."""
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        url = self.join(store_url, f"{LEASE_DIR}/{name}")
        stop = threading.Event()
        since = time.time()

        def write() -> None:
            body = {"what": what, "host": socket.gethostname(), "pid": os.getpid()}
            body.update(user=who().split("@")[0], since=since)
            body["expires"] = time.time() + ttl_s
            self.put(url, json.dumps(body).encode(), if_absent=False)

        write()

        def renew() -> None:
            while not stop.wait(ttl_s / 3):
                with contextlib.suppress(Exception):  # a missed renewal only shortens the lease
                    write()

        t = threading.Thread(target=renew, daemon=True, name="se3t-lease")
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(timeout=5)
            with contextlib.suppress(Exception):
                self.delete([url])

    def live_leases(self, store_url: str, now: float | None = None) -> list[dict[str, Any]]:
        """The unexpired leases on a store. A lease of a process on this host that no longer
        runs (killed) is not live, and is removed."""
        now = time.time() if now is None else now
        out = []
        for name in self.list(self.join(store_url, LEASE_DIR)):
            url = self.join(store_url, f"{LEASE_DIR}/{name}")
            try:
                body = json.loads(self.get(url) or b"")
            except ValueError:
                continue
            if float(body.get("expires", 0)) <= now:
                continue
            if body.get("host") == socket.gethostname() and not alive(int(body.get("pid", 0))):
                with contextlib.suppress(InputError):
                    self.delete([url])
                continue
            out.append(body)
        return out


def _precondition_failed(err: BaseException) -> bool:
    for e in _root_cause(err):
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = str(resp.get("Error", {}).get("Code", ""))
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                409,
                412,
            ):
                return True
        if "PreconditionFailed" in str(e) or "Precondition Failed" in str(e):
            return True
    return False
