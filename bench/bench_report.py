"""The HTML QC report's cost against the run it reports on (issue 12: <= 15 % of a default run).

Stage ``report.run``: :func:`gpuperf.report.publish_result` of a finished run, as ``gpuperf dsc``
/ ``asl`` call it by default, on the issue's sizes: DSC oSVD, 68 x 68 x 48 grid (about 154 000
brain voxels) x 80 frames; ASL multi-PLD pCASL, about 200 000 voxels x 7 PLDs x 6 repeats. The
pipeline runs once (``pipeline_s``, process time ``pipeline_cpu_s``); the report is timed over
rounds. ``report_share`` = report / (pipeline + report), the fraction of a default run (without
interpreter start-up) spent on the report; ``report_cpu_s`` is its process time, less sensitive
to other load than the wall clock. ``voxels`` are the run's voxels.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from gpuperf.benchmarks.conventions import record
from gpuperf.benchmarks.wholeprocess import write_asl_inputs, write_dsc_inputs


def _run_once(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    res = fn()
    return res, time.perf_counter() - t0, time.process_time() - c0


@pytest.fixture(scope="module")
def dsc_run(tmp_path_factory):
    from gpuperf.dsc.pipeline import run_dsc

    d = tmp_path_factory.mktemp("report_dsc")
    series, mask, _ = write_dsc_inputs(d)
    return _run_once(
        lambda: run_dsc(
            series, d / "out", mask_path=mask, device="cpu", extra_outputs=("report.html",)
        )
    )


@pytest.fixture(scope="module")
def asl_run(tmp_path_factory):
    from gpuperf.asl.pipeline import run_asl

    d = tmp_path_factory.mktemp("report_asl")
    ph = write_asl_inputs(d / "in")
    return _run_once(
        lambda: run_asl(
            ph["asl"], d / "out", mask_path=ph["mask"], device="cpu", extra_outputs=("report.html",)
        )
    )


@pytest.mark.parametrize("modality", ["dsc", "asl"])
def test_report(benchmark, modality, request):
    from gpuperf.report import publish_result

    res, pipeline_s, pipeline_cpu = request.getfixturevalue(f"{modality}_run")
    cpu = []

    def publish():
        c0 = time.process_time()
        publish_result(res, overwrite=True)
        cpu.append(time.process_time() - c0)

    benchmark.pedantic(publish, rounds=3, iterations=1, warmup_rounds=1)
    report_s = float(benchmark.stats.stats.median)
    record(
        benchmark,
        stage="report.run",
        method="osvd" if modality == "dsc" else "buxton_pcasl",
        voxels=int(res.summary["voxels"]),
        backend="numpy",
        variant=modality,
        pipeline_s=round(pipeline_s, 3),
        pipeline_cpu_s=round(pipeline_cpu, 3),
        report_cpu_s=round(float(np.median(cpu)), 3),
        report_share=round(report_s / (pipeline_s + report_s), 3),
        loadavg_1m=round(os.getloadavg()[0], 2),
        note="publish_result of a finished run (maps read back, checks, montages, curves, "
        "histograms); report_share = report / (pipeline + report)",
    )
