"""Reports render in a real browser (issue 7): headless Chromium loads each page from disk and
the page's own script records whether every image decoded (``naturalWidth > 0``); the browser's
console must stay silent (a blocked or missing resource is logged there).

Chromium is Debian's ``chromium``. When it is absent the test installs it with apt-get only
when running as root in CI (``CI=true``); elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report_run import assert_self_contained, references, write_outputs

from gpuperf.report import write_cohort_report, write_run_report

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_chromium() -> str:
    for name in _NAMES:
        exe = shutil.which(name)
        if exe:
            return exe
    if _in_ci() and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, env=env)
        r = subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            capture_output=True,
            text=True,
            env=env,
        )
        exe = shutil.which("chromium")
        if exe:
            return exe
        pytest.fail(f"CI: could not install chromium with apt-get: {r.stderr[-2000:]}")
    pytest.skip(
        "headless Chromium is not installed (apt-get install chromium); installing it "
        "is attempted only as root with CI=true"
    )


def render(page: Path, tmp_path: Path) -> tuple[dict[str, str], str]:
    """Load ``page`` in headless Chromium; returns (#gp-image-status attributes, console log)."""
    exe = find_chromium()
    profile = tmp_path / f"chromium-{page.stem}"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r'<div id="gp-image-status"([^>]*)>', r.stdout)
    assert m, "the page's image-status element is missing from the rendered DOM"
    attrs = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', m.group(1)))
    console = "\n".join(ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln)
    return attrs, console


def check_page(page: Path, tmp_path: Path) -> int:
    refs = assert_self_contained(page)
    attrs, console = render(page, tmp_path)
    assert attrs.get("data-done") == "true", f"load event never ran: {attrs}"
    assert int(attrs["data-total"]) == refs.n_img > 0
    assert attrs["data-ok"] == attrs["data-total"], f"images not decoded: {attrs['data-broken']}"
    assert console == "", f"browser console reported problems:\n{console}"
    return refs.n_img


def test_reports_render_in_chromium(tmp_path):
    find_chromium()  # skip early, before building anything, when there is no browser
    rows = []
    for prefix, modality in (("sub-01", "dsc"), ("sub-02", "asl")):
        sub = tmp_path / prefix
        write_outputs(sub, prefix, modality, shape=(20, 20, 6))
        page = write_run_report(sub, prefix, modality, max_slices=6)
        check_page(page, tmp_path)
        rows.append({"subject": prefix, "out_dir": sub, "prefix": prefix})
    cohort = write_cohort_report(tmp_path, rows)
    assert check_page(cohort, tmp_path) == 2
    assert len([h for h in references(cohort).href if h.endswith("_report.html")]) == 2


def test_broken_image_is_detected(tmp_path):
    """The check itself can fail: a page with a missing image is reported as broken."""
    find_chromium()
    page = tmp_path / "broken.html"
    from gpuperf.report.html import page as make_page

    page.write_text(make_page("t", "run", ['<img src="missing.png" alt="gone">']), "utf-8")
    attrs, console = render(page, tmp_path)
    assert attrs["data-total"] == "1" and attrs["data-ok"] == "0" and attrs["data-broken"] == "gone"
    assert "missing.png" in console  # blocked by the page's Content-Security-Policy
