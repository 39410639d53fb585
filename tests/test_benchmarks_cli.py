"""``gpuperf bench`` end to end on a tiny benchmark folder (real pytest-benchmark run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuperf.cli import app

REPO = Path(__file__).resolve().parents[1]

TINY = """
import time


def test_fast(benchmark, record):
    record(benchmark, stage="demo.stage", method="m", voxels=1000, backend="numpy")
    benchmark.pedantic(time.sleep, args=(0.001,), rounds=3)


def test_slow_baseline(benchmark, record):
    record(benchmark, stage="demo.stage", method="m", voxels=10, backend="numpy",
           baseline="loop")
    benchmark.pedantic(time.sleep, args=(0.002,), rounds=3)
"""


@pytest.fixture
def bench_dir(tmp_path):
    d = tmp_path / "bench"
    d.mkdir()
    shutil.copy(REPO / "bench" / "conftest.py", d / "conftest.py")
    (d / "bench_tiny.py").write_text(TINY)
    return d


def test_bench_json_table_and_results(bench_dir):
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--bench-dir", str(bench_dir), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    rows = {r["name"]: r for r in payload["rows"]}
    assert set(rows) == {"test_fast", "test_slow_baseline"}
    fast = rows["test_fast"]
    # rates: 1000 voxels per ~1 ms vs 10 voxels per ~2 ms -> a ratio of roughly 200
    assert 20 < fast["ratios"]["loop"] < 2000
    assert fast["size"] == "laptop"
    assert payload["meta"]["machine"]["cores"] >= 1

    res = runner.invoke(app, ["bench", "--bench-dir", str(bench_dir), "--update-results"])
    assert res.exit_code == 0, res.output
    assert "demo.stage" in res.stdout and "loop ×" in res.stdout
    text = (bench_dir / "RESULTS.md").read_text()
    assert "| demo.stage | m | numpy |" in text
    assert len(list((bench_dir / "results" / "runs").glob("*.json"))) == 1


def test_bench_errors_are_one_line(bench_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--bench-dir", str(tmp_path / "nowhere")])
    assert res.exit_code == 2
    assert "no benchmark suite" in res.output
    res = runner.invoke(app, ["bench", "--bench-dir", str(bench_dir), "-k", "nothing_matches"])
    assert res.exit_code == 2
    assert "no benchmark selected" in res.output


def test_bench_accuracy_json(tmp_path):
    runner = CliRunner()
    out = tmp_path / "acc"
    args = ["bench", "--accuracy", "--accuracy-voxels", "3", "--out", str(out), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["Headline"] and (out / "accuracy_dsc.tsv").exists()


def test_failed_benchmark_exits_1_and_keeps_results_untouched(bench_dir):
    (bench_dir / "bench_broken.py").write_text(
        "def test_broken(benchmark, record):\n    raise RuntimeError('[boom] x')\n"
    )
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--bench-dir", str(bench_dir)])
    assert res.exit_code == 1
    assert "some benchmarks failed" in res.stdout and "demo.stage" in res.stdout
    res = runner.invoke(app, ["bench", "--bench-dir", str(bench_dir), "--update-results"])
    assert res.exit_code == 2 and "not updating RESULTS.md" in res.output
    assert not (bench_dir / "RESULTS.md").exists()


def test_bench_accuracy_update_results_goes_into_the_checkout(bench_dir):
    runner = CliRunner()
    args = ["bench", "--accuracy", "--accuracy-voxels", "3", "--bench-dir", str(bench_dir),
            "--update-results"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (bench_dir / "results" / "accuracy" / "accuracy_summary.json").exists()
    assert "## Method accuracy" in (bench_dir / "RESULTS.md").read_text()


def test_conftest_fails_a_benchmark_without_the_convention(bench_dir):
    import subprocess
    import sys

    (bench_dir / "bench_bare.py").write_text(
        "def test_bare(benchmark):\n    benchmark.pedantic(sum, args=([1],), rounds=2)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(bench_dir / "bench_bare.py"), "-q",
         "-p", "no:cacheprovider", f"--rootdir={bench_dir}"],
        capture_output=True, text=True, timeout=120, cwd=bench_dir,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "lacks ['stage', 'method', 'backend', 'device', 'voxels']" in proc.stdout
