"""``se3t data fetch``: a real HTTP server on 127.0.0.1 (dropped transfers, resume, bad checksum,
404, 5xx), the installed qm9pack package, and local folders and archives."""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from se3t.data.fetch import download
from se3t.data.sources.qm9 import build_qm9, fetch, qm9pack_files
from se3t.data.store import fingerprint
from se3t.errors import InputError

QM9 = Path(__file__).parent / "qm9"
ARCHIVE = QM9 / "figshare" / "dsgdb9nsd.xyz.tar.bz2"
UNCHARACTERIZED = b" Indices of molecules that failed the consistency check\n   999999  C  C\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        rng = self.headers.get("Range")
        srv.log.append((self.path, rng))
        if srv.fail_status:
            status = srv.fail_status.pop(0)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if rng and srv.honor_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut > 0:  # drop the connection half way through the body
            srv.cut -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {
        "/dsgdb9nsd.xyz.tar.bz2": ARCHIVE.read_bytes(),
        "/uncharacterized.txt": UNCHARACTERIZED,
    }
    httpd.log, httpd.cut, httpd.honor_range, httpd.fail_status = [], 0, True, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


SHA = _sha(ARCHIVE.read_bytes())
FAST = {"backoff": 0.01, "timeout": 10.0, "progress": False}


def test_figshare_fetch_then_build_equals_csv_build(server, tmp_path, qm9_store):
    raw = tmp_path / "raw"
    manifest = fetch(
        "figshare",
        raw,
        figshare_url=server.url + "/dsgdb9nsd.xyz.tar.bz2",
        figshare_sha256=SHA,
        uncharacterized_url=server.url + "/uncharacterized.txt",
        uncharacterized_sha256=_sha(UNCHARACTERIZED),
        **FAST,
    )
    assert manifest["files"]["dsgdb9nsd.xyz.tar.bz2"]["sha256"] == SHA
    assert json.loads((raw / "SOURCE.json").read_text())["source"] == "figshare"
    assert sorted(p.name for p in raw.iterdir()) == [
        "SOURCE.json",
        "dsgdb9nsd.xyz.tar.bz2",
        "uncharacterized.txt",
    ]
    out = build_qm9(raw, tmp_path / "s.zarr", processes=1, progress=False)
    assert out["fingerprint"] == fingerprint(qm9_store)  # both formats: the same dataset
    assert out["report"]["uncharacterized_listed"] == 1
    # fetched again: files with the expected sha256 are not downloaded again
    n = len(server.log)
    fetch(
        "figshare",
        raw,
        figshare_url=server.url + "/dsgdb9nsd.xyz.tar.bz2",
        figshare_sha256=SHA,
        uncharacterized_url=server.url + "/uncharacterized.txt",
        uncharacterized_sha256=_sha(UNCHARACTERIZED),
        **FAST,
    )
    assert len(server.log) == n


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.cut = 1
    dest = tmp_path / "a.tar.bz2"
    assert download(server.url + "/dsgdb9nsd.xyz.tar.bz2", dest, sha256=SHA, **FAST) == SHA
    size = len(ARCHIVE.read_bytes())
    assert server.log == [
        ("/dsgdb9nsd.xyz.tar.bz2", None),
        ("/dsgdb9nsd.xyz.tar.bz2", f"bytes={size // 2}-"),
    ]
    assert dest.read_bytes() == ARCHIVE.read_bytes()
    assert not dest.with_name(dest.name + ".part").exists()


def test_server_without_range_support_restarts(server, tmp_path):
    server.cut, server.honor_range = 1, False
    dest = tmp_path / "a.tar.bz2"
    assert download(server.url + "/dsgdb9nsd.xyz.tar.bz2", dest, sha256=SHA, **FAST) == SHA
    assert len(server.log) == 2 and dest.read_bytes() == ARCHIVE.read_bytes()


def test_partial_download_survives_failed_run_and_resumes(server, tmp_path):
    server.cut = 10
    dest = tmp_path / "a.tar.bz2"
    with pytest.raises(InputError, match="download failed after 3 attempts"):
        download(server.url + "/dsgdb9nsd.xyz.tar.bz2", dest, sha256=SHA, retries=2, **FAST)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size
    assert have > 0 and not dest.exists()
    server.cut, server.log = 0, []
    assert download(server.url + "/dsgdb9nsd.xyz.tar.bz2", dest, sha256=SHA, **FAST) == SHA
    assert server.log == [("/dsgdb9nsd.xyz.tar.bz2", f"bytes={have}-")]  # one request: the rest
    assert dest.read_bytes() == ARCHIVE.read_bytes()


def test_wrong_checksum_removes_everything(server, tmp_path):
    dest = tmp_path / "a.tar.bz2"
    with pytest.raises(InputError, match="sha256 mismatch for a.tar.bz2: expected 0000"):
        download(server.url + "/dsgdb9nsd.xyz.tar.bz2", dest, sha256="0" * 64, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_404_fails_at_once(server, tmp_path):
    with pytest.raises(InputError, match=r"/missing.tar.bz2: HTTP 404"):
        download(server.url + "/missing.tar.bz2", tmp_path / "m", retries=5, **FAST)
    assert len(server.log) == 1 and list(tmp_path.iterdir()) == []


def test_server_errors_are_retried(server, tmp_path):
    server.fail_status = [503, 500]
    dest = tmp_path / "a.tar.bz2"
    assert download(server.url + "/dsgdb9nsd.xyz.tar.bz2", dest, sha256=SHA, **FAST) == SHA
    assert len(server.log) == 3


def test_connection_refused_names_url(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(InputError, match=f"127.0.0.1:{port}/x: download failed after 2"):
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", retries=1, **FAST)


# ----------------------------------------------------------------------------- qm9pack


def test_qm9pack_located_without_import():
    files = qm9pack_files()
    assert sorted(files) == ["qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"]
    for path, digest in files.values():
        assert path.is_file() and len(digest) == 64


def test_qm9pack_fetch_copies_and_checks(tmp_path):
    raw = tmp_path / "raw"
    manifest = fetch("qm9pack", raw, progress=False)
    files = qm9pack_files()
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == files[name][1]  # what the wheel's RECORD says
        assert (raw / name).stat().st_size == files[name][0].stat().st_size
    stamp = (raw / "qm9_part1.csv").stat().st_mtime_ns
    fetch("qm9pack", raw, progress=False)
    assert (raw / "qm9_part1.csv").stat().st_mtime_ns == stamp  # up to date: not copied again


# ----------------------------------------------------------------------------- local paths


def test_local_xyz_folder_and_archive(tmp_path, qm9_store):
    folder = tmp_path / "xyz"
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(folder, filter="data")
    fetch(str(folder), tmp_path / "raw1", progress=False)
    assert (tmp_path / "raw1" / "qm9_xyz.tar").is_file()
    a = build_qm9(tmp_path / "raw1", tmp_path / "a.zarr", processes=1, progress=False)
    assert a["fingerprint"] == fingerprint(qm9_store)
    fetch(str(ARCHIVE), tmp_path / "raw2", progress=False)
    assert (tmp_path / "raw2" / ARCHIVE.name).read_bytes() == ARCHIVE.read_bytes()


def test_local_path_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        fetch(str(tmp_path / "nope"), tmp_path / "raw", progress=False)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="notes.txt: not a tar archive"):
        fetch(str(tmp_path / "notes.txt"), tmp_path / "raw", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .xyz files"):
        fetch(str(tmp_path / "empty"), tmp_path / "raw", progress=False)


def test_cli_figshare_with_overrides(server, tmp_path, capsys):
    from se3t.cli import main

    argv = [
        "data",
        "fetch",
        "--source",
        "figshare",
        "--out",
        str(tmp_path / "raw"),
        "--quiet",
        f"data.figshare_url={server.url}/dsgdb9nsd.xyz.tar.bz2",
        "data.retries=1",
        f"data.uncharacterized_url={server.url}/uncharacterized.txt",
    ]
    assert main([*argv, f"data.figshare_sha256={SHA}"]) == 0
    err = capsys.readouterr().err
    assert "uncharacterized.txt was not checked" in err and "dsgdb9nsd" not in err
    assert main([*argv, "data.figshare_sha256=" + "ab" * 32, "--out", str(tmp_path / "r2")]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (tmp_path / "r2" / "dsgdb9nsd.xyz.tar.bz2").exists()
