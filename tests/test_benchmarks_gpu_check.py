"""bench/gpu_check.py: its dry run starts and writes its files; its pieces parse and render."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dry_run_writes_json_and_md(tmp_path):
    proc = _run("--dry-run", "--skip-tests", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (json_path,) = tmp_path.glob("*-dry-run.json")
    md_path = json_path.with_suffix(".md")
    assert md_path.exists()
    report = json.loads(json_path.read_text())
    assert report["schema"] == "gpuperf-gpu-check/1"
    assert report["dry_run"] is True and report["summary"]["ok"] is True
    from gpuperf.cuda.catalog import KERNEL_FILES
    from gpuperf.fit.models import MODELS

    # every kernel file of the catalog has a parity row (the fit kernel: one per model), all ok
    assert {p["kernel"] for p in report["parity"]} == set(KERNEL_FILES)
    lm_cases = {p["case"] for p in report["parity"] if p["kernel"] == "fit/lm_fit.cu"}
    assert lm_cases == {f"lm_fit<T, {m}>" for m in MODELS}
    assert all(p["ok"] for p in report["parity"])
    assert {t["kernel"] for t in report["timings"]} == set(KERNEL_FILES)
    assert report["ceilings"]["copy_gbps"] > 0
    text = md_path.read_text()
    assert "**PASS**" in text and "## Parity" in text and "## Kernel timings" in text
    assert not list(tmp_path.glob(".gpu-check-*"))  # no temporary file left


def test_without_gpu_says_so_and_writes_nothing(tmp_path):
    proc = _run("--out", str(tmp_path), GPUPERF_DISABLE_GPU="1")
    assert proc.returncode == 2
    assert "no usable GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_parse_pytest_summary(gpu_check):
    c = gpu_check.parse_pytest_summary("...\nFAILED x\n3 passed, 2 skipped, 1 error in 4.20s\n")
    assert (c["passed"], c["skipped"], c["errors"], c["failed"]) == (3, 2, 1, 0)
    c = gpu_check.parse_pytest_summary("a\n20/286 tests collected (266 deselected) in 2.1s")
    assert c["tests"] == 20 and c["deselected"] == 266
    c = gpu_check.parse_pytest_summary("1 failed, 7 passed, 3 deselected in 9.0s")
    assert (c["failed"], c["passed"], c["deselected"]) == (1, 7, 3)


def test_kernel_timer_wraps_get_module(gpu_check, monkeypatch):
    import gpuperf.cuda.source as source

    calls = []

    class FakeModule:
        def get_function(self, name):
            return lambda *args: calls.append((name, args)) or "launched"

    monkeypatch.setattr(source, "get_module", lambda *a, **k: FakeModule())
    timer = gpu_check.KernelTimer(gpu_check.Device(dry_run=True))
    with timer.active():
        kernel = source.get_module("x", "src", ["k<float>"]).get_function("k<float>")
        assert kernel((1,), (128,), (3,)) == "launched"
        kernel((1,), (128,), (4,))
    assert [c[0] for c in calls] == ["k<float>", "k<float>"]
    total = timer.take()
    assert total is not None and total >= 0
    assert timer.take() is None
    assert isinstance(source.get_module("x", "s", []), FakeModule)  # unpatched afterwards


def test_render_md_of_a_gpu_report(gpu_check):
    report = {
        "device": "NVIDIA H100 80GB HBM3",
        "datetime": "2026-01-25T07:00:00+00:00",
        "command": "PYTHONPATH=. python bench/gpu_check.py",
        "commit": "abc",
        "dirty": False,
        "python": "3.12",
        "numpy": "2.1",
        "elapsed_s": 300.0,
        "device_info": {"name": "NVIDIA H100", "compute_capability": "9.0"},
        "ceilings": {
            "copy_gbps": 3000.0,
            "copy_bytes": 2**31,
            "fma_gflops": 50000.0,
            "sgemm_n": 8192,
            "sgemm_gflops": 40000.0,
        },  # fmt: skip
        "gpu_tests": {
            "command": "-m pytest -m gpu tests",
            "returncode": 0,
            "passed": 30,
            "failed": 0,
            "skipped": 0,
            "ok": True,
            "tail": "30 passed",
        },  # fmt: skip
        "parity": [
            {
                "kernel": "fit/lm_fit.cu",
                "case": "lm_fit<float, monoexp>",
                "compared": "gpu",
                "against": "numpy",
                "voxels": 20000,
                "agree_fraction": 0.9995,
                "max_rel_diff_agreeing": 1e-5,
                "status_agree_fraction": 1.0,
                "ok": True,
            },
            {"kernel": "dsc/new.cu", "case": "-", "ok": False, "error": "no parity check"},
        ],  # fmt: skip
        "timings": [
            {
                "kernel": "dsc/osvd_select.cu",
                "case": "osvd_select<float>",
                "voxels": 655000,
                "kernel_ms_median": 2.0,
                "call_ms_median": 30.0,
                "voxels_per_s_kernel": 3.3e8,
                "voxels_per_s_call": 2.2e7,
                "bandwidth_gbps": 200.0,
                "bandwidth_pct_of_copy": 6.7,
                "gflops_est": 9000.0,
                "flops_pct_of_fma_peak": 18.0,
                "osvd_total_ms_median": 5.0,
            },
            {"kernel": "fit/lm_fit.cu", "case": "monoexp 10000000", "error": "skipped: budget"},
        ],  # fmt: skip
    }
    report["summary"] = gpu_check.summarize(report)
    assert report["summary"]["ok"] is False  # the kernel without a parity check fails
    md = gpu_check.render_md(report)
    assert "**FAIL**" in md
    assert "| dsc/osvd_select.cu | osvd_select<float> | 655,000 | 2 | 30 |" in md
    assert "9000 (18%)" in md and "no parity check" in md
