"""report.html in a real headless browser (Debian's chromium): the page loads from disk with no
console message, every image decodes, and no URL outside the folder is requested.

Dependency-free: chromium's ``--dump-dom`` prints the DOM after the load event, where the page's
inline script has set ``data-images-ok``; ``--enable-logging=stderr`` prints every console
message as an ``INFO:CONSOLE`` line. A deliberately broken page checks that both checks can fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bench.report import build_report
from bench.run import pictures
from tests.test_report_plots import synthetic_dataset, synthetic_embeddings

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)
FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")


def load_in_browser(page: Path, profile: Path, *extra: str) -> tuple[str, list[str]]:
    """The DOM after load and the console lines of one headless chromium visit."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", *extra,
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def _body(dom: str) -> str:
    found = re.search(r"<body[^>]*>", dom)
    assert found, dom[:500]
    return found.group(0)


def test_report_page_renders_in_chromium(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "report_run_a", run)
    dataset = synthetic_dataset()
    pictures.save_run_artifacts(run, dataset, {"moco_v2": synthetic_embeddings(dataset, 8, 1),
                                                "m6_moe": synthetic_embeddings(dataset, 32, 2)})
    report = build_report(run)
    html = report.html.read_text()
    n_images = html.count("<img ")
    assert n_images == len([p for p in report.plots if p.path is not None]) + 1 == 12  # + glance
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing remote
    assert 'src="data:image/png;base64,' in html

    dom, console = load_in_browser(report.html, tmp_path / "profile")
    body = _body(dom)
    assert 'data-images-ok="true"' in body
    assert f'data-images="{n_images}"' in body
    assert console == []
    for link in ("results.csv", "run.json", "summary.md", "tables/ctr.csv", "tables/knn.json"):
        assert f'href="{link}"' in dom and (run / link).is_file()


def _with_intervals(run: Path) -> None:
    """A verdicts.csv for the fixture run: every cell gets an interval and a mark, the widest
    cells the tables show."""
    results = pd.read_csv(run / "results.csv")
    frame = results.groupby(["task", "extractor", "variant", "metric"], sort=False)[
        "value"].mean().reset_index()
    frame = frame.assign(se=0.01, ci_low=frame["value"] - 0.0196,
                         ci_high=frame["value"] + 0.0196, n_seeds=3, unit="query", n_units=300,
                         reference="random", diff=0.1, diff_low=0.08, diff_high=0.12,
                         p_value=1e-4, verdict="better", test="paired bootstrap")
    frame.to_csv(run / "verdicts.csv", index=False)


@pytest.mark.parametrize("intervals", [False, True], ids=["fixture", "with-intervals"])
def test_no_horizontal_scroll_at_1400_px(tmp_path: Path, intervals: bool) -> None:
    """At 1400 px the page does not scroll sideways and no table needs its own scroll bar (a
    wide table wraps its intervals onto a second line); the glance figure is on top."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "report_run_a", run)
    if intervals:
        _with_intervals(run)
    report = build_report(run)
    html = report.html.read_text()
    assert html.index('id="plot-glance"') < html.index('id="validity"')
    assert "best: {m6_moe, moco_v2} (tied at 95%)" in html
    dom, console = load_in_browser(report.html, tmp_path / "profile", "--window-size=1400,1000")
    body = _body(dom)
    page = re.search(r'data-page-width="(\d+)"', body).group(1)
    view = re.search(r'data-view-width="(\d+)"', body).group(1)
    assert int(view) > 1300 and page == view, body
    assert 'data-wide-boxes="0"' in body, body
    assert console == []


def test_broken_page_is_caught(tmp_path: Path) -> None:
    """The same checks flag a page with a broken image and a script error."""
    from bench.report.html import SCRIPT

    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA">'
                    "<script>console.error('boom'); notDefined();</script>"
                    f"<script>{SCRIPT}</script></body></html>")
    dom, console = load_in_browser(page, tmp_path / "profile")
    assert 'data-images-ok="false"' in _body(dom)
    assert any("boom" in line for line in console)
    assert any("notDefined" in line for line in console)
