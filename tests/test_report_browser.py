"""The experiment report opened in a real headless browser: its tables render and its images load.

Chromium (Debian's ``chromium`` package) loads a copy of report.html with a small script appended
that, on the load event, writes what the browser actually rendered — tables, rows, images and each
image's decoded size — into the DOM; ``--dump-dom`` returns that DOM. A screenshot is taken too.
Skipped when no Chromium is installed, unless UNMEMORIZE_REQUIRE_BROWSER=1 (CI), then it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from test_experiments import tiny_experiment
from unlearning_fixtures import one_thread
from unmemorize.experiments import load_config, run_experiment
from unmemorize.report.experiments import write_experiment_report

PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = {
    tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('table tbody tr').length,
    headers: Array.prototype.map.call(document.querySelectorAll('h2'), function (h) { return h.textContent; }),
    images: imgs.map(function (i) { return [i.complete, i.naturalWidth, i.naturalHeight]; }),
    cellHeaders: Array.prototype.map.call(document.querySelectorAll('h2 ~ table th'),
                                          function (t) { return t.textContent; })
  };
  var pre = document.createElement('pre');
  pre.id = 'browser-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("UNMEMORIZE_REQUIRE_BROWSER") == "1":
        pytest.fail("UNMEMORIZE_REQUIRE_BROWSER=1 but no Chromium is installed (apt-get install chromium)")
    pytest.skip("no headless browser: install Debian's chromium package to run this test")


def browser(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def exe() -> str:
    return chromium()  # before the experiment runs: a skip costs nothing


@pytest.fixture(scope="module")
def report(exe, tmp_path_factory) -> Path:
    """The experiment's report.html (write_experiment_report returns the page with its Markdown and images)."""
    root = tmp_path_factory.mktemp("browser")
    path = tiny_experiment(root, methods=["ga", {"name": "sga", "label": "SGA"}])
    with one_thread():
        folders = run_experiment(load_config(path), root / "out")
    return write_experiment_report(folders, root / "report", title="Browser check").html


def test_report_renders_tables_and_images_in_chromium(exe, report, tmp_path):
    page = tmp_path / "probe.html"
    page.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    res = browser(exe, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', res.stdout, re.S)
    assert found, "the page's load handler did not run: " + res.stdout[-500:]
    got = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    # Summary has no table; the cell section has the paper table in two halves; Runs has one row per run
    assert got["tables"] == 3 and got["rows"] == 2 + 2 + 4
    assert got["headers"][0] == "Summary" and got["headers"][-1] == "Runs"
    assert any("records (|D_f| = 4)" in h for h in got["headers"])
    assert {"method", "c(D_f)", "avg accuracy", "avg F1", "dialogue CE (nats)", "distance to τ (points)", "steps",
            "seconds", "MIAU AUC", "MIAU TPR@1%FPR", "c_low", "c_high"} <= set(got["cellHeaders"])
    # four plots (before/after, trajectories, ROC, utility), each decoded by the browser
    assert len(got["images"]) == 4
    for complete, width, height in got["images"]:
        assert complete and width > 300 and height > 150

    shot = tmp_path / "report.png"
    res = browser(exe, tmp_path / "profile2", "--window-size=1200,1800", f"--screenshot={shot}", report.as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1200, 1800)
    assert shot.stat().st_size > 50_000  # a blank page compresses to a few kB
