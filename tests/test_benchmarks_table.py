"""The benchmark table, ratios, RESULTS.md writer and suite runner, on synthetic JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gpuperf.benchmarks import results, table
from gpuperf.benchmarks.runner import BenchmarkSuiteError, find_bench_dir, pytest_command
from gpuperf.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _bench(name, median, **info):
    return {
        "name": name,
        "fullname": f"bench/bench_x.py::{name}",
        "extra_info": info,
        "stats": {"median": median, "rounds": 7, "mean": median},
    }


def _data(*benches, commit="abc123", dirty=False):
    return {
        "machine_info": {
            "cpu": {"brand_raw": "Test CPU 9000", "count": 8},
            "python_version": "3.11.7",
            "system": "Linux",
            "release": "6.0",
        },
        "commit_info": {"id": commit, "dirty": dirty},
        "datetime": "2026-01-25T06:00:00+00:00",
        "benchmarks": list(benches),
    }


COMMON = {"stage": "dsc.deconvolution", "device": "CPU (NumPy)"}


@pytest.fixture
def data():
    return _data(
        # gpuperf oSVD: 10 000 voxels in 0.01 s -> 1e6 voxels/s
        _bench("test_osvd[numpy]", 0.01, method="osvd", backend="numpy", voxels=10_000, **COMMON),
        # on the GPU: 1e6 voxels in 0.002 s -> 5e8 voxels/s
        _bench(
            "test_osvd[cupy]",
            0.002,
            method="osvd",
            backend="cupy",
            voxels=1_000_000,
            stage="dsc.deconvolution",
            device="NVIDIA H100",
        ),
        # baselines: osipy 1000 voxels in 0.1 s -> 1e4/s; voxel loop 100 voxels in 1 s -> 100/s
        _bench(
            "test_osipy",
            0.1,
            method="osvd",
            backend="osipy",
            voxels=1000,
            baseline="osipy",
            baseline_version="0.1.4",
            **COMMON,
        ),
        _bench(
            "test_loop",
            1.0,
            method="osvd",
            backend="numpy",
            voxels=100,
            baseline="svd_loop",
            **COMMON,
        ),
        # a baseline of another method must not be compared with oSVD
        _bench(
            "test_ssvd_loop",
            0.5,
            method="ssvd",
            backend="numpy",
            voxels=100,
            baseline="svd_loop",
            **COMMON,
        ),
        # another stage, no baseline
        _bench(
            "test_asl",
            0.2,
            stage="asl.fit",
            method="buxton_pcasl",
            backend="numpy",
            device="CPU",
            voxels=2000,
        ),
    )


def test_rates_and_ratios_against_same_stage_and_method(data):
    rows = {r.name: r for r in table.build_rows(data)}
    npy, gpu = rows["test_osvd[numpy]"], rows["test_osvd[cupy]"]
    assert npy.voxels_per_s == pytest.approx(1e6)
    assert gpu.voxels_per_s == pytest.approx(5e8)
    # rate ratios, not time ratios: the baselines ran on fewer voxels
    assert npy.ratios == pytest.approx({"osipy": 100.0, "svd_loop": 1e4})
    assert gpu.ratios == pytest.approx({"osipy": 5e4, "svd_loop": 5e6})
    assert rows["test_osipy"].ratios == {}  # baselines get no ratios
    assert rows["test_asl"].ratios == {}  # nothing to compare with
    # the ssvd baseline is not folded into the osvd comparison
    assert all("ssvd" not in k for k in npy.ratios)


def test_rows_sorted_gpuperf_before_baselines(data):
    rows = table.build_rows(data)
    osvd = [r for r in rows if r.method == "osvd"]
    assert [r.is_baseline for r in osvd] == [False, False, True, True]
    assert rows[0].stage == "asl.fit"


def test_duplicate_baseline_names_are_kept_apart():
    d = _data(
        _bench("test_g", 1.0, method="m", backend="numpy", voxels=10, **COMMON),
        _bench("test_b[a]", 1.0, method="m", backend="scipy", voxels=5, baseline="loop", **COMMON),
        _bench("test_b[b]", 2.0, method="m", backend="scipy", voxels=5, baseline="loop", **COMMON),
    )
    row = next(r for r in table.build_rows(d) if r.name == "test_g")
    assert row.ratios == pytest.approx({"loop [test_b[a]]": 2.0, "loop [test_b[b]]": 4.0})


def test_unlabelled_benchmark_is_shown_with_problem():
    d = _data({"name": "test_bare", "extra_info": {}, "stats": {"median": 0.5, "rounds": 3}})
    (row,) = table.build_rows(d)
    assert row.stage == table.UNLABELLED
    assert row.voxels is None and row.voxels_per_s is None
    assert any("voxels" in p for p in row.problems)
    cells = table.table_cells(row)
    assert "missing extra_info" in cells[-1]
    assert cells[6] == "n/a"


def test_markdown_and_json_rendering(data):
    rows = table.build_rows(data)
    md = table.to_markdown(rows)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| stage | method | backend")
    assert len(lines) == 2 + len(rows)
    assert "baseline osipy 0.1.4 (osipy)" in md
    assert "osipy ×100" in md and "svd_loop ×10,000" in md
    payload = json.loads(table.to_json(rows, {"size": "laptop"}))
    assert payload["meta"] == {"size": "laptop"}
    by_name = {r["name"]: r for r in payload["rows"]}
    assert by_name["test_osvd[numpy]"]["voxels_per_s"] == pytest.approx(1e6)
    assert by_name["test_osvd[numpy]"]["ratios"]["osipy"] == pytest.approx(100.0)


def test_json_has_no_nan():
    d = _data({"name": "test_nan", "extra_info": dict(COMMON, method="m", backend="numpy")})
    rows = table.build_rows(d)
    assert math.isnan(rows[0].median_s)
    text = table.to_json(rows)  # allow_nan=False would raise on NaN
    assert json.loads(text)["rows"][0]["median_s"] is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(2.5, "2.5 s"), (0.0123, "12.3 ms"), (4.2e-6, "4.2 µs"), (3e-9, "3 ns"), (math.nan, "n/a")],
)
def test_format_time(seconds, text):
    assert table.format_time(seconds) == text


def test_format_rate():
    assert table.format_rate(1.5e6) == "1.5 M"
    assert table.format_rate(999.0) == "999"
    assert table.format_rate(None) == "n/a"


def test_load_benchmark_json_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        table.load_benchmark_json(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        table.load_benchmark_json(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"benchmarks": 3}')
    with pytest.raises(InputError, match="benchmarks"):
        table.load_benchmark_json(wrong)


# -- RESULTS.md ---------------------------------------------------------------------------------
def test_results_md_latest_per_machine(tmp_path, data):
    bench = tmp_path / "bench"
    rows = table.build_rows(data)
    rec = results.make_run_record(data, rows, "gpuperf bench --size laptop", extra={"numpy": "2"})
    assert rec["machine"]["cpu"] == "Test CPU 9000" and rec["machine"]["cores"] == 8
    assert rec["machine"]["gpus"] == ["NVIDIA H100"]
    md_path, run_file = results.update_results(rec, bench)
    text = md_path.read_text()
    assert "do not edit by hand" in text
    assert "Test CPU 9000 (8 cores) + NVIDIA H100" in text
    assert "- command: `gpuperf bench --size laptop`" in text
    assert "- commit: abc123" in text
    assert "- date: 2026-01-25T06:00:00+00:00" in text
    assert "osipy ×100" in text

    # a newer run on the same machine and size replaces the old one ...
    newer = dict(data, datetime="2026-02-01T00:00:00+00:00", commit_info={"id": "def456"})
    rec2 = results.make_run_record(newer, rows, "gpuperf bench")
    _, run_file2 = results.update_results(rec2, bench)
    assert run_file2 == run_file
    text = md_path.read_text()
    assert "def456" in text and "abc123" not in text
    # ... while another machine gets its own section, newest first
    other = dict(newer, machine_info={"cpu": {"brand_raw": "Other CPU", "count": 2}})
    other["datetime"] = "2026-03-01T00:00:00+00:00"
    cpu_rows = [r for r in table.build_rows(other) if r.backend != "cupy"]
    results.update_results(results.make_run_record(other, cpu_rows, "gpuperf bench"), bench)
    text = md_path.read_text()
    assert text.index("## Other CPU (2 cores)") < text.index("## Test CPU 9000")
    assert len(list((bench / "results" / "runs").glob("*.json"))) == 2


def test_results_md_dirty_and_uncommitted(tmp_path, data):
    data = dict(data, commit_info={"id": "abc", "dirty": True})
    rec = results.make_run_record(data, table.build_rows(data), "cmd")
    assert "abc (with uncommitted changes)" in results.render_results_md([rec])
    data = dict(data, commit_info={"id": "unversioned"})
    rec = results.make_run_record(data, table.build_rows(data), "cmd", repo=tmp_path)
    assert rec["commit"] is None  # tmp_path is not a git checkout
    assert "unknown (not a git checkout)" in results.render_results_md([rec])


def test_results_md_round_trip_rows(data):
    rows = table.build_rows(data)
    rec = json.loads(json.dumps(results.make_run_record(data, rows, "cmd")))
    again = results.rows_from_record(rec)
    assert table.to_markdown(again) == table.to_markdown(rows)


def test_results_md_lists_gpu_reports(tmp_path):
    res = tmp_path / "bench" / "results"
    res.mkdir(parents=True)
    rep = {
        "schema": results.GPU_CHECK_SCHEMA,
        "device": "NVIDIA H100",
        "datetime": "2026-01-25T07:00:00+00:00",
        "commit": "abc",
        "summary": {"ok": True, "text": "12 gpu tests passed"},
    }
    (res / "2026-01-25-nvidia-h100.json").write_text(json.dumps(rep))
    (res / "unrelated.json").write_text('{"x": 1}')
    md, run_file = results.update_results(None, tmp_path / "bench")
    text = md.read_text()
    assert run_file is None
    assert "No benchmark run recorded yet" in text
    assert "[2026-01-25-nvidia-h100](results/2026-01-25-nvidia-h100.md)" in text
    assert "PASS — 12 gpu tests passed" in text
    assert "unrelated" not in text


def test_slug():
    assert results.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert results.slug("///") == "unknown"


# -- runner ---------------------------------------------------------------------------------------
def test_find_bench_dir_in_checkout_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("GPUPERF_BENCH_DIR", raising=False)
    assert find_bench_dir() == (REPO / "bench").resolve()
    with pytest.raises(BenchmarkSuiteError, match="not in the installed package"):
        find_bench_dir(tmp_path)
    monkeypatch.setenv("GPUPERF_BENCH_DIR", str(tmp_path))
    with pytest.raises(BenchmarkSuiteError, match="GPUPERF_BENCH_DIR"):
        find_bench_dir()


def test_pytest_command(tmp_path):
    cmd = pytest_command(tmp_path / "bench", tmp_path / "o.json", "brain", "osvd and not osipy")
    assert "--bench-size=brain" in cmd
    assert f"--benchmark-json={tmp_path / 'o.json'}" in cmd
    assert cmd[cmd.index("-k") + 1] == "osvd and not osipy"


def test_variant_tells_parametrised_rows_apart():
    b1 = _bench("test_run[numpy-serial]", 2.0, method="osvd", backend="numpy", voxels=10, **COMMON)
    b1["param"] = "numpy-serial"
    b2 = _bench("test_run[numpy-x]", 1.0, method="osvd", backend="numpy", voxels=10,
                variant="two processes", **COMMON)  # fmt: skip
    b2["param"] = "numpy-x"
    rows = {r.name: r for r in table.build_rows(_data(b1, b2))}
    assert rows["test_run[numpy-serial]"].variant == "serial"
    assert rows["test_run[numpy-x]"].variant == "two processes"  # explicit wins
    assert table.table_cells(rows["test_run[numpy-serial]"])[1] == "osvd [serial]"


def test_rich_table_shows_brackets_verbatim():
    from rich.console import Console

    b = _bench("test_run[numpy-serial]", 2.0, method="osvd", backend="numpy", voxels=10, **COMMON)
    b["param"] = "numpy-serial"
    console = Console(record=True, width=200)
    console.print(table.to_rich(table.build_rows(_data(b)), title="t [x]"))
    text = console.export_text()
    assert "osvd [serial]" in text and "t [x]" in text


def test_results_md_includes_accuracy_summary(tmp_path):
    acc = tmp_path / "bench" / "results" / results.ACCURACY_DIR
    acc.mkdir(parents=True)
    summary = {
        "DateTime": "2026-01-25T07:00:00+00:00",
        "SoftwareVersion": "0.1.0",
        "Backend": "numpy",
        "OsipyVersion": "0.1.4",
        "Headline": [{"modality": "dsc", "method": "osvd", "condition": "delay_s=3",
                      "truth": 60.0, "cbf_bias_pct": -45.3, "cbf_sd_pct": 4.2,
                      "cbf_median_bias_pct": -45.0, "n_valid": 500, "n": 500}],
        "OsipyFindings": {"osipy_csvd_minus_ssvd_max_abs": 0.0},
    }  # fmt: skip
    (acc / "accuracy_summary.json").write_text(json.dumps(summary))
    md, _ = results.update_results(None, tmp_path / "bench")
    text = md.read_text()
    assert "## Method accuracy" in text
    assert "| dsc | delay_s=3 | osvd | -45.3 | 4.2 | -45.0 | 500/500 |" in text
    assert "osipy cSVD minus osipy sSVD CBF, max |difference|: 0.0" in text


def test_details_lines_and_whole_process_vs_scipy():
    row = table.BenchRow
    rows = [
        row("a", "cli.asl", "buxton_pcasl", "numpy", "cpu", 200_000, 4.0, variant="default+report",
            extra={"loadavg_1m": 1.5, "note": "not shown"}),
        row("b", "asl.fit", "buxton_pcasl", "scipy", "cpu", 500, 1.0, baseline="scipy_loop"),
        row("c", "report.run", "osvd", "numpy", "cpu", 10, 0.1, variant="dsc",
            extra={"report_share": 0.09}),
        row("d", "dsc.deconvolution", "osvd", "numpy", "cpu", 10, 0.1),
    ]  # fmt: skip
    lines = results.render_details_md(rows)
    assert lines[0] == ""
    assert "- cli.asl buxton_pcasl [default+report]: loadavg_1m 1.5" in lines
    assert "- report.run osvd [dsc]: report_share 0.09" in lines
    # 50 000 voxels/s whole process against 500 voxels/s fit only
    assert lines[-1].endswith("×100 (voxels/s)") and "not shown" not in "".join(lines)
    assert results.render_details_md(rows[3:]) == []
