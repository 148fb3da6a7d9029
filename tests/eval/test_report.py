"""``se3t report``: a self-contained HTML page (checked in headless Chromium) and its twin."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from se3t.errors import InputError
from se3t.eval import build_report

CHROMIUM = "/usr/bin/chromium"
# set on <html> once every <img> has loaded and decoded to a non-empty bitmap
MARKER_SCRIPT = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);
  document.documentElement.setAttribute("data-images", ok.length + "/" + imgs.length);
});
</script>"""


def _chromium(*args: str, profile_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile_dir}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_is_self_contained_with_its_markdown_twin(results_copy):
    html_path, md_path = build_report(results_copy)
    assert html_path == results_copy / "report.html" and md_path == results_copy / "report.md"
    page = html_path.read_text()
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == 5  # parity, errors, learning curves, memory, throughput
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    # no scripts, nothing fetched from elsewhere (URLs in the config's text are fine)
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\(""", page)
    # the published references and the device stand beside se3t's figures
    for text in ("0.0342", "0.0346", "0.035", "2.21", "2.92", "22.95", "A100", "torch"):
        assert text in page, text
    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 5 and all((md_path.parent / link).is_file() for link in links)
    assert "| homo | eV |" in md and "0.0342–0.0346" in md


def test_report_names_the_model_beside_published_figures(results_copy):
    """The tiny test run is not the paper's model: the report says so, names its size and
    gives no ratio to the paper model's published MAE."""
    _, md_path = build_report(results_copy)
    md = md_path.read_text()
    assert "not the paper's model (7 layers, degrees 0–3, 32 channels, 8 heads)" in md
    row = next(line for line in md.splitlines() if line.startswith("| homo | eV |"))
    assert "×" not in row and "not the paper's model" in row
    assert "| source | model | device | precision | batch | mol/ms |" in md
    assert "parameters" in md


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_report_renders_in_headless_chromium_with_every_image_decoded(results_copy, tmp_path):
    html_path, _ = build_report(results_copy, tmp_path / "report.html")
    n_img = html_path.read_text().count("<img ")
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", MARKER_SCRIPT + "</body>"))
    dom = _chromium(
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
        profile_dir=tmp_path / "chrome1",
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-images="{n_img}/{n_img}"' in dom.stdout, dom.stdout[:300]
    # the probe does catch a broken image: truncate one image's data and it counts one less
    head, _, tail = probe.read_text().partition('src="data:image/png;base64,')
    broken = tmp_path / "broken.html"
    broken.write_text(head + 'src="data:image/png;base64,iVBORw0KGgo' + tail[tail.index('"') :])
    dom = _chromium(
        "--virtual-time-budget=10000",
        "--dump-dom",
        broken.as_uri(),
        profile_dir=tmp_path / "chrome3",
    )
    assert f'data-images="{n_img - 1}/{n_img}"' in dom.stdout, dom.stdout[:300]
    shot = tmp_path / "report.png"
    proc = _chromium(
        f"--screenshot={shot}",
        "--window-size=1100,2400",
        "--hide-scrollbars",
        html_path.as_uri(),
        profile_dir=tmp_path / "chrome2",
    )
    assert proc.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", proc.stderr
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    print(f"screenshot: {shot}")


@pytest.mark.parametrize("missing", ["metrics.json", "metrics.jsonl", "predictions.csv"])
def test_a_results_folder_missing_a_file_is_named(results_copy, missing):
    (results_copy / "runs" / "tiny" / missing).unlink()
    with pytest.raises(InputError, match=f"is missing {re.escape(missing)}"):
        build_report(results_copy)
    assert not (results_copy / "report.html").exists()


@pytest.mark.slow
def test_malformed_evaluation_is_a_one_line_cli_error(results_copy, tmp_path):
    (results_copy / "runs" / "tiny" / "metrics.json").write_text('{"kind": "se3t.evaluate"}')
    proc = subprocess.run(
        [sys.executable, "-m", "se3t.cli", "report", str(results_copy)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "metrics.json" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no run"):
        build_report(empty)


def test_paths_are_relative_to_the_results_folder(results_copy, evaluated_run):
    """The run was trained and evaluated in a temporary folder, then copied to runs/tiny: the
    report names the checkpoint at its place in the results folder, not the temporary one."""
    recorded = json.loads((results_copy / "runs" / "tiny" / "metrics.json").read_text())
    assert Path(recorded["checkpoint"]).parent == evaluated_run  # an absolute path elsewhere
    html_path, md_path = build_report(results_copy)
    md = md_path.read_text()
    name = Path(recorded["checkpoint"]).name
    assert f"checkpoint runs/tiny/{name} (epoch" in md
    assert "| run folder | runs/tiny |" in md
    assert "From runs/tiny/" in md or "From profile/memory.json" in md
    metrics_para = next(line for line in md.splitlines() if line.startswith("Split "))
    assert str(evaluated_run) not in metrics_para and str(results_copy) not in metrics_para
    assert f"checkpoint runs/tiny/{name} (epoch" in html_path.read_text()
    # the run folder itself as the results folder: the checkpoint is named within it
    _, md_path = build_report(results_copy / "runs" / "tiny")
    assert f"checkpoint {name} (epoch" in md_path.read_text()


def test_report_without_profile_says_so(results_copy):
    shutil.rmtree(results_copy / "profile")
    html_path, md_path = build_report(results_copy / "runs" / "tiny")
    assert "No profile found" in html_path.read_text()
    assert html_path.read_text().count("<img ") == 3


def test_committed_example_report_is_whole_and_small():
    folder = Path(__file__).parents[2] / "docs" / "example-report"
    page = (folder / "report.html").read_text()
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    md = (folder / "report.md").read_text()
    assert all((folder / link).is_file() for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 1_000_000
    # the run's own files are named within the results folder, not where the run was made
    for text in (md, page):
        assert "checkpoint runs/example/best.pt (epoch" in text and "checkpoint /tmp" not in text


def test_report_takes_exactly_the_runs_it_is_given(results_copy):
    # a run folder left from an earlier config stays on disk but is not reported
    shutil.copytree(results_copy / "runs" / "tiny", results_copy / "runs" / "stale")
    html_path, md_path = build_report(results_copy, runs=[results_copy / "runs" / "tiny"])
    md = md_path.read_text()
    assert "## Run tiny" in md and "stale" not in md
    both = build_report(results_copy, results_copy / "both.html")[1].read_text()
    assert "## Run tiny" in both and "## Run stale" in both  # found when not given
    proc = subprocess.run(
        [sys.executable, "-m", "se3t.cli", "report", str(results_copy), "--runs"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--runs" in proc.stderr
