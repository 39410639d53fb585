#!/usr/bin/env python
"""GPU validation in one call: gpu tests, CuPy-vs-NumPy parity of every kernel, kernel timings.

Run on a machine with an NVIDIA GPU and CuPy, from the repository root::

    PYTHONPATH=. python bench/gpu_check.py

It (1) runs the ``gpu``-marked tests (``pytest -m gpu tests``); (2) checks every kernel file in
``gpuperf.cuda.catalog.KERNEL_FILES`` on CuPy against its NumPy twin (the LM fit kernel for every
model of the registry, the oSVD selection kernel); (3) times each kernel with CUDA events
(warm-up, then the median of repeats) at sizes that fill the device (LM 1e6-1e7 voxels, oSVD
655 000 x 60) -- the kernel launch alone and the whole call from host arrays; (4) measures the
device's ceilings (device-to-device copy bandwidth, FP32 FMA rate, SGEMM rate) and reports the
achieved bandwidth (and, for oSVD, an estimated FLOP rate) against them. It writes
``bench/results/<date>-<device>.json`` and ``.md`` and regenerates ``bench/RESULTS.md``.
It stops starting new work after ``--budget-s`` seconds (default 420) so it ends well within 10
minutes. Needs: Python >= 3.10, cupy-cuda12x/13x, numpy, scipy, pytest (no nibabel, no network).

``--dry-run`` runs the same code without a GPU: parity is the g++ host build of each kernel
against NumPy, timings use the wall clock on tiny sizes, and the gpu tests are only collected;
the files are written the same way (with ``dry-run`` in the name). Tests use it so the script is
known to start and write its files correctly on machines without a GPU.

Exit status: 0 when every check passed, 1 when a check failed, 2 when no GPU is usable (without
``--dry-run``) or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

SCHEMA = "gpuperf-gpu-check/1"
#: LM parity passes when this fraction of voxels agree (float32 fits may part ways on a few
#: ill-conditioned voxels: a different but equally valid local minimum).
PARITY_MIN_AGREE = 0.99
PARITY_RTOL = 2e-3
#: Models whose direct fit from one start is ill-posed on the synthetic problem: float32
#: rounding legitimately ends elsewhere, so only float64 parity decides for them.
ILL_POSED_DIRECT_FITS = {
    "buxton_pcasl_arterial": "direct 4-parameter fit from one start (aBV, aBAT free) is ill-posed "
    "here (~23 % fail even in float64); float32 rounding picks other local minima, so float64 "
    "parity decides",
}
#: Voxels of the parity problems.
PARITY_VOXELS = 20_000
#: ASL constants of the synthetic problems (T1 tissue, T1 blood, lambda, alpha).
PCASL_CONSTS = (1.3, 1.65, 0.9, 0.85)
PASL_CONSTS = (1.3, 1.65, 0.9, 0.98)
PCASL_PLDS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5)
PCASL_TAU_S = 1.8
PASL_TIS_S = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
PASL_TI1_S = 0.8


# -- small utilities ------------------------------------------------------------------------------
class Budget:
    """Wall-clock budget: later stages are skipped (and say so) once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.t0 = time.perf_counter()
        self.seconds = seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "unknown"


def git_commit() -> tuple[str | None, bool]:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        return commit or None, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, False


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gpu-check-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


# -- the device -----------------------------------------------------------------------------------
class Device:
    """What the checks run on: CuPy + CUDA events, or (dry run) NumPy + the wall clock."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.xp: Any = np
        self.info: dict[str, Any] = {}
        if dry_run:
            from gpuperf.benchmarks.machine import cpu_description

            self.name = f"dry-run on {cpu_description()}"
            self.info = {"name": self.name, "backend": "numpy (dry run: no GPU used)"}
            return
        import cupy

        self.xp = cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        free, total = cupy.cuda.Device(0).mem_info
        self.info = {
            "name": self.name,
            "compute_capability": f"{props['major']}.{props['minor']}",
            "multiprocessors": int(props["multiProcessorCount"]),
            "memory_total_gib": round(total / 2**30, 2),
            "memory_free_gib": round(free / 2**30, 2),
            "clock_mhz": int(props.get("clockRate", 0)) // 1000,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "cupy": cupy.__version__,
        }

    def sync(self) -> None:
        if not self.dry_run:
            self.xp.cuda.get_current_stream().synchronize()

    def time_ms(self, fn: Callable[[], Any]) -> float:
        """Duration of ``fn()`` in ms: CUDA events on the GPU, the wall clock in a dry run."""
        if self.dry_run:
            t0 = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - t0)
        cp = self.xp
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(cp.cuda.get_elapsed_time(start, end))


class KernelTimer:
    """Times every launch of a kernel obtained through ``gpuperf.cuda.source.get_module``.

    The project's launchers fetch their kernels from ``get_module(...).get_function(expr)``;
    wrapping that one function gives CUDA-event timings of the launches alone (no transfers,
    no host work) for every kernel without copying any launch code here.
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        self.launches: list[tuple[str, float]] = []
        self._patched: list[tuple[Any, str, Any]] = []

    def _wrap_module(self, module: Any) -> Any:
        timer = self

        class Module:
            def get_function(self, name: str) -> Any:
                kernel = module.get_function(name)

                def launch(*args: Any, **kwargs: Any) -> Any:
                    out: list[Any] = []
                    ms = timer.device.time_ms(lambda: out.append(kernel(*args, **kwargs)))
                    timer.launches.append((name, ms))
                    return out[0]

                return launch

            def __getattr__(self, attr: str) -> Any:
                return getattr(module, attr)

        return Module()

    @contextmanager
    def active(self):
        import gpuperf.cuda.source as source

        targets = [source]
        try:
            import gpuperf.fit._kernel_lm as kernel_lm

            targets.append(kernel_lm)
        except ImportError:
            pass
        for mod in targets:
            original = getattr(mod, "get_module", None)
            if original is None:
                continue

            def patched(*a: Any, _orig: Any = original, **k: Any) -> Any:
                return self._wrap_module(_orig(*a, **k))

            self._patched.append((mod, "get_module", original))
            mod.get_module = patched
        try:
            yield self
        finally:
            for mod, attr, original in self._patched:
                setattr(mod, attr, original)
            self._patched.clear()

    def take(self) -> float | None:
        """Total ms of the launches since the last call (None when nothing was launched)."""
        if not self.launches:
            return None
        total = sum(ms for _n, ms in self.launches)
        self.launches.clear()
        return total


# -- synthetic problems ---------------------------------------------------------------------------
def lm_problem(model: str, n_vox: int, seed: int = 0) -> dict[str, Any]:
    """x, y, p0, consts for ``model`` with known truth (plus noise)."""
    from gpuperf.fit.models import MODELS

    rng = np.random.default_rng(seed)
    if model in ("monoexp", "gammavar"):
        from gpuperf.fit import _synthetic

        pr = (_synthetic.monoexp_problem(rng, n_vox, n_samples=10) if model == "monoexp"
              else _synthetic.gammavar_problem(rng, n_vox))  # fmt: skip
        return {"x": pr.x, "y": pr.y, "p0": pr.p0, "consts": np.zeros(0), "truth": pr.truth}
    m = MODELS[model]
    if model == "dsc_gamma_residue":
        return dsc_gamma_residue_problem(n_vox, rng)
    if model.endswith("_sliced"):  # a per-voxel slice-time offset, held fixed (2D readouts)
        pr = lm_problem(model[: -len("_sliced")], n_vox, seed)
        dt = np.random.default_rng(seed + 1).uniform(0.0, 0.8, (n_vox, 1))
        truth = np.concatenate([pr["truth"], dt], axis=1)
        f, _ = m.evaluate(np, truth, pr["x"], pr["consts"])
        y = f + rng.normal(0.0, 0.02 * float(np.abs(f).max()), f.shape)
        fixed = np.zeros(m.n_params, dtype=bool)
        fixed[-1] = True
        if model.startswith("buxton_pcasl_arterial"):
            fixed[3] = True  # aBAT: a box edge carries no gradient (gpuperf.asl.arterial)
        p0 = np.concatenate([pr["p0"], dt], axis=1)
        return {**pr, "y": y, "p0": p0, "truth": truth, "fixed": fixed}
    if model == "buxton_pasl":
        t = np.asarray(PASL_TIS_S)
        x = np.stack([t, np.full(t.size, PASL_TI1_S)], axis=1)
        consts = np.asarray(PASL_CONSTS)
        truth = np.stack([rng.uniform(20, 80, n_vox), rng.uniform(0.4, 1.2, n_vox)], axis=1)
        p0 = np.tile([50.0, 0.7], (n_vox, 1))
    else:
        pld = np.asarray(PCASL_PLDS_S)
        x = np.stack([PCASL_TAU_S + pld, np.full(pld.size, PCASL_TAU_S)], axis=1)
        consts = np.asarray(PCASL_CONSTS)
        cols = [rng.uniform(20, 80, n_vox), rng.uniform(0.5, 2.0, n_vox)]
        p0 = [50.0, 1.3]
        if model == "buxton_pcasl_arterial":
            cols += [rng.uniform(0.2, 2.0, n_vox), cols[1] * rng.uniform(0.3, 0.8, n_vox)]
            p0 += [0.5, 0.65]
        truth = np.stack(cols, axis=1)
        p0 = np.tile(p0, (n_vox, 1))
    f, _ = m.evaluate(np, truth, x, consts)
    y = f + rng.normal(0.0, 0.02 * float(np.abs(f).max()), f.shape)
    return {"x": x, "y": y, "p0": p0, "consts": consts, "truth": truth}


def dsc_gamma_residue_problem(n_vox: int, rng: Any) -> dict[str, Any]:
    """Parametric DSC curves (TR 1.5 s, 60 frames): the phantom AIF as a fine table, truth
    flow/MTT/shape/delay drawn at random, start values 20-30 % off, 2 % noise."""
    from gpuperf.dsc.simulate import aif_curve
    from gpuperf.fit.models import MODELS
    from gpuperf.fit.models.dsc_gamma_residue import aif_table

    t = np.arange(60) * 1.5
    h = 1.5 / 8
    consts = aif_table(0.0, h, aif_curve(np.arange(59 * 8 + 1) * h))
    cols = (rng.uniform(0.003, 0.015, n_vox), rng.uniform(3.0, 10.0, n_vox),
            rng.uniform(1.5, 8.0, n_vox), rng.uniform(-1.0, 2.5, n_vox))  # fmt: skip
    truth = np.stack(cols, axis=1)
    p0 = truth * np.array([1.3, 0.75, 1.0, 1.0]) + np.array([0.0, 0.0, 0.0, 0.5])
    p0[:, 2] = 3.0
    f, _ = MODELS["dsc_gamma_residue"].evaluate(np, truth, t[:, None], consts)
    y = f + rng.normal(0.0, 0.02 * float(np.abs(f).max()), f.shape)
    return {"x": t[:, None], "y": y, "p0": p0, "consts": consts, "truth": truth}


def osvd_problem(n_vox: int, n_frames: int = 60, seed: int = 0) -> dict[str, Any]:
    """dR2* curves (CBF 10-80, MTT 2-10 s, delay 0-3 s, noise) and the AIF, TR 1.5 s."""
    from gpuperf.dsc.simulate import aif_curve, tissue_curve

    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) * 1.5
    # a small dictionary of curves, tiled: simulation by fine-grid convolution is slow per curve
    n_dict = 64
    params = np.stack([rng.uniform(10, 80, n_dict), rng.uniform(2, 10, n_dict),
                       rng.uniform(0, 3, n_dict)], axis=1)  # fmt: skip
    curves = np.stack([tissue_curve(t, *p) for p in params])
    idx = rng.integers(0, n_dict, n_vox)
    conc = (curves[idx] + rng.normal(0.0, 0.3, (n_vox, n_frames))).astype(np.float32)
    return {"conc": conc, "aif": aif_curve(t), "dt_s": 1.5}


# -- 1. gpu tests ---------------------------------------------------------------------------------
def parse_pytest_summary(text: str) -> dict[str, int]:
    """Counts from pytest's last summary line (``3 passed, 1 skipped in 2.1s``)."""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors", "deselected", "tests")}
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        sel = re.search(r"(\d+)/(\d+) tests? collected", line)  # -m with --collect-only
        if sel:
            counts["tests"] = int(sel.group(1))
            counts["deselected"] = int(sel.group(2)) - int(sel.group(1))
            break
        found = re.findall(
            r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed|tests? collected)",
            line,
        )
        if found:
            for n, word in found:
                key = "errors" if word.startswith("error") else word
                key = "tests" if "collected" in word else key
                if key in counts:
                    counts[key] += int(n)
            break
    return counts


def run_gpu_tests(device: Device, budget: Budget, timeout_s: float) -> dict[str, Any]:
    # Test modules that need what a bare GPU machine lacks (nibabel, hypothesis) fail to import;
    # the gpu tests of the other modules must still run, and the errors are reported.
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider",
           "--continue-on-collection-errors"]  # fmt: skip
    if device.dry_run:
        cmd.append("--collect-only")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))  # fmt: skip
    t0 = time.perf_counter()
    timeout = max(10.0, min(timeout_s, budget.left() - 60.0))
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (
            (exc.stdout or b"").decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else (exc.stdout or "")
        )
        out += f"\n(timed out after {timeout:.0f} s)"
        rc = -1
    counts = parse_pytest_summary(out)
    errored = sorted(set(re.findall(r"ERROR (tests/\S+?\.py)", out)))
    # a test module that fails to collect hides its gpu tests: that fails the check too
    collected = counts["errors"] == 0 and not errored
    if device.dry_run:
        ok = rc in (0, 5) and counts["tests"] > 0 and collected
    else:
        # failures fail the check; zero passed means the gpu tests did not really run
        ok = rc == 0 and counts["failed"] == 0 and counts["passed"] > 0 and collected
    return {
        "command": " ".join(cmd[1:]),
        "returncode": rc,
        "collected_only": device.dry_run,
        "duration_s": round(time.perf_counter() - t0, 2),
        **counts,
        "ok": bool(ok),
        "modules_not_importable": errored,
        "tail": "\n".join(out.strip().splitlines()[-25:]),
    }


# -- 2. parity ------------------------------------------------------------------------------------
def _agreement(a: np.ndarray, b: np.ndarray, rtol: float) -> tuple[float, float]:
    """Fraction of rows whose entries all agree to ``rtol`` (relative to the row's scale),
    and the largest relative difference among those rows."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    scale = np.maximum(np.abs(a), np.abs(b)) + 1e-6
    rel = np.abs(a - b) / scale
    rel = np.where(np.isnan(a) & np.isnan(b), 0.0, rel)
    rel = np.where(np.isnan(rel), np.inf, rel)
    row = rel.max(axis=1) if rel.ndim == 2 else rel
    agree = row <= rtol
    return float(agree.mean()), float(row[agree].max()) if agree.any() else float("inf")


def parity_lm(model: str, device: Device, n_vox: int) -> dict[str, Any]:
    """The fit kernel on the GPU (or its host build) against the NumPy twin, float64 and float32.

    The rule is :func:`gpuperf.cuda.parity.fit_parity` (robust to FMA contraction and CUDA's
    libm): a voxel agrees with the same status and parameters within tolerance, or an equally
    good chi2. float64 must agree on 99.9 % of voxels, float32 on 99 %.
    Models in :data:`ILL_POSED_DIRECT_FITS` report float32 without failing on it.
    """
    from gpuperf.fit import fit_lm

    pr = lm_problem(model, n_vox, seed=1)
    other = "host" if device.dry_run else "gpu"
    row: dict[str, Any] = {"kernel": "fit/lm_fit.cu", "case": f"lm_fit<T, {model}>",
                           "against": "numpy", "compared": other, "voxels": n_vox}  # fmt: skip
    from gpuperf.cuda.parity import fit_parity

    for dt in (np.float64, np.float32):
        kw = {"consts": pr["consts"], "dtype": dt, "fixed": pr.get("fixed")}
        ref = fit_lm(model, pr["x"], pr["y"], pr["p0"], device="cpu", **kw)
        res = fit_lm(model, pr["x"], pr["y"], pr["p0"], device=other, **kw)
        rep = fit_parity(ref, res, dt)  # same status and parameters, or an equally good chi2
        tag = "f64" if dt == np.float64 else "f32"
        row[f"{tag}_agree_fraction"] = rep.same_params_fraction
        row[f"{tag}_max_rel_diff_agreeing"] = rep.max_rel_diff
        row[f"{tag}_same_or_equally_good"] = rep.ok_fraction
        row[f"{tag}_status_agree_fraction"] = rep.status_agree_fraction
    f64_ok = row["f64_same_or_equally_good"] >= 0.999
    f32_ok = row["f32_same_or_equally_good"] >= PARITY_MIN_AGREE
    row["ok"] = bool(f64_ok and (f32_ok or model in ILL_POSED_DIRECT_FITS))
    if model in ILL_POSED_DIRECT_FITS and not f32_ok:
        row["note"] = ILL_POSED_DIRECT_FITS[model]
    # the headline columns of the report
    row["agree_fraction"] = row["f64_agree_fraction"]
    row["max_rel_diff_agreeing"] = row["f64_max_rel_diff_agreeing"]
    row["status_agree_fraction"] = row["f32_status_agree_fraction"]
    return row


def parity_osvd(device: Device, n_vox: int) -> dict[str, Any]:
    from gpuperf.dsc import osvd as osvd_mod

    pr = osvd_problem(n_vox, seed=2)
    plan = osvd_mod.make_plan(pr["aif"], pr["dt_s"])
    coef = osvd_mod.coefficients(pr["conc"], plan, np)
    ref = osvd_mod.select_numpy(coef, plan)
    if device.dry_run:
        res = osvd_mod.select_host(coef, plan)
        get = np.asarray
        other = "host"
    else:
        res = osvd_mod.select_cupy(device.xp.asarray(coef), plan)
        get = device.xp.asnumpy
        other = "gpu"
    same_set = get(res.set_index) == np.asarray(ref.set_index)
    frac, worst = _agreement(np.asarray(ref.rmax)[same_set], get(res.rmax)[same_set], 1e-4)
    set_frac = float(same_set.mean())
    return {
        "kernel": "dsc/osvd_select.cu", "case": "osvd_select<float>", "against": "numpy",
        "compared": other, "voxels": n_vox, "agree_fraction": set_frac * frac,
        "max_rel_diff_agreeing": worst, "status_agree_fraction": set_frac, "rtol": 1e-4,
        "ok": set_frac * frac >= 0.999,
    }  # fmt: skip


def run_parity(device: Device, budget: Budget, quick: bool) -> list[dict[str, Any]]:
    from gpuperf.cuda.catalog import KERNEL_FILES
    from gpuperf.fit.models import MODELS

    n_vox = 2_000 if device.dry_run else PARITY_VOXELS
    checks: dict[str, list[Callable[[], dict[str, Any]]]] = {
        "fit/lm_fit.cu": [
            (lambda m=m: parity_lm(m, device, n_vox))
            for m in (["monoexp"] if quick else list(MODELS))
        ],
        "dsc/osvd_select.cu": [lambda: parity_osvd(device, n_vox)],
    }
    rows = []
    for kernel_file in KERNEL_FILES:
        if kernel_file not in checks:
            rows.append({"kernel": kernel_file, "case": "-", "ok": False,
                         "error": "no parity check in bench/gpu_check.py: add one"})  # fmt: skip
            continue
        for check in checks[kernel_file]:
            if budget.left() < 120:
                rows.append({"kernel": kernel_file, "case": "-", "ok": None,
                             "error": "skipped: time budget spent"})  # fmt: skip
                continue
            try:
                row = check()
            except Exception as exc:  # report and go on: one broken kernel must not hide others
                row = {"kernel": kernel_file, "case": "-", "ok": False,
                       "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
            log(f"parity {row.get('case')}: {'ok' if row['ok'] else 'FAIL'} "
                f"(agree {row.get('agree_fraction', float('nan')):.4f})")  # fmt: skip
            rows.append(row)
    return rows


# -- 3. ceilings ----------------------------------------------------------------------------------
def measure_ceilings(device: Device) -> dict[str, Any]:
    xp = device.xp
    n = (1 << 22) if device.dry_run else (1 << 28)  # 16 MiB / 1 GiB of float32
    a = xp.ones(n, dtype=xp.float32)
    b = xp.empty_like(a)

    def copy() -> None:
        xp.copyto(b, a)

    copy()
    device.sync()
    ms = float(np.median([device.time_ms(copy) for _ in range(5)]))
    out: dict[str, Any] = {"copy_bytes": 2 * 4 * n, "copy_ms": ms,
                           "copy_gbps": 2 * 4 * n / (ms * 1e-3) / 1e9}  # fmt: skip
    m = 1024 if device.dry_run else 8192
    x = xp.ones((m, m), dtype=xp.float32)
    y = xp.ones((m, m), dtype=xp.float32)
    xp.matmul(x, y)
    device.sync()
    ms = float(np.median([device.time_ms(lambda: xp.matmul(x, y)) for _ in range(3)]))
    out.update(sgemm_n=m, sgemm_ms=ms, sgemm_gflops=2 * m**3 / (ms * 1e-3) / 1e9)
    if not device.dry_run:
        out.update(fma_peak(device))
    return out


def fma_peak(device: Device) -> dict[str, Any]:
    """FP32 FMA throughput: independent fmaf chains per thread (a throughput microbenchmark)."""
    cp = device.xp
    iters = 512
    kernel = cp.ElementwiseKernel(
        "float32 x",
        "float32 y",
        f"""
        float a = x, b = x + 1.0f, c = x + 2.0f, d = x + 3.0f;
        for (int k = 0; k < {iters}; ++k) {{
            a = fmaf(a, 0.9999f, 0.0001f); b = fmaf(b, 0.9999f, 0.0001f);
            c = fmaf(c, 0.9999f, 0.0001f); d = fmaf(d, 0.9999f, 0.0001f);
        }}
        y = a + b + c + d;
        """,
        "gpuperf_fma_peak",
    )
    n = 1 << 24
    x = cp.ones(n, dtype=cp.float32)
    y = cp.empty_like(x)
    kernel(x, y)
    device.sync()
    ms = float(np.median([device.time_ms(lambda: kernel(x, y)) for _ in range(5)]))
    flops = n * iters * 4 * 2
    return {"fma_ms": ms, "fma_gflops": flops / (ms * 1e-3) / 1e9}


# -- 4. timings -----------------------------------------------------------------------------------
def time_case(device: Device, timer: KernelTimer, fn: Callable[[], Any], repeats: int) -> dict:
    """Warm-up once, then ``repeats`` calls: median kernel ms (events) and whole-call ms."""
    fn()
    device.sync()
    timer.take()
    kernel_ms, call_ms = [], []
    for _ in range(repeats):
        call_ms.append(device.time_ms(fn))
        k = timer.take()
        if k is not None:
            kernel_ms.append(k)
    return {
        "repeats": repeats,
        "call_ms_median": float(np.median(call_ms)),
        "kernel_ms_median": float(np.median(kernel_ms)) if kernel_ms else None,
    }


def lm_bytes(n_vox: int, n_samples: int, n_par: int, itemsize: int = 4) -> int:
    """Least bytes the LM kernel must move: y, p0, bounds in; params, stderr, chi2, status out."""
    return n_vox * (itemsize * (n_samples + 3 * n_par + 2 * n_par + 1) + 4 + 1)


def osvd_cost(n_vox: int, plan: Any) -> tuple[int, int]:
    """(bytes, flops) estimates for ``osvd_select``: read coef (M) per voxel, write 4 outputs;
    rebuild the residue incrementally (2 M L flops) and one OI per distinct set (~5 L each)."""
    m = plan.weights.shape[1]
    n_pad = plan.n_pad
    n_sets = plan.set_rows.size
    return n_vox * (4 * m + 16), n_vox * (2 * m * n_pad + 5 * n_sets * n_pad)


def run_timings(
    device: Device, budget: Budget, ceilings: dict[str, Any], quick: bool
) -> list[dict[str, Any]]:
    from gpuperf.dsc import osvd as osvd_mod
    from gpuperf.fit import fit_lm
    from gpuperf.fit.models import MODELS

    timer = KernelTimer(device)
    lm_device = "host" if device.dry_run else "gpu"
    if device.dry_run:
        lm_cases = [("monoexp", 2_000)]
        osvd_sizes = [2_000]
    else:
        lm_cases = [("monoexp", 1_000_000), ("monoexp", 10_000_000)]
        if not quick:
            lm_cases += [("buxton_pcasl", 2_000_000), ("buxton_pasl", 1_000_000),
                         ("buxton_pcasl_arterial", 1_000_000), ("gammavar", 1_000_000)]  # fmt: skip
        osvd_sizes = [655_000]
    rows: list[dict[str, Any]] = []
    copy_gbps = ceilings.get("copy_gbps")
    fma_gflops = ceilings.get("fma_gflops")
    with timer.active():
        for model, n_vox in lm_cases:
            if budget.left() < 90:
                rows.append({"kernel": "fit/lm_fit.cu", "case": f"{model} {n_vox}",
                             "error": "skipped: time budget spent"})  # fmt: skip
                continue
            try:
                pr = lm_problem(model, n_vox, seed=3)
                y = pr["y"].astype(np.float32)
                box: dict[str, Any] = {}

                def call(pr=pr, y=y, model=model, box=box) -> None:
                    box["res"] = fit_lm(model, pr["x"], y, pr["p0"], consts=pr["consts"],
                                        device=lm_device, dtype=np.float32)  # fmt: skip

                t = time_case(device, timer, call, repeats=3)
                n_s, n_p = y.shape[1], MODELS[model].n_params
                kms = t["kernel_ms_median"]
                row = {"kernel": "fit/lm_fit.cu", "case": f"lm_fit<float, {model}>",
                       "voxels": n_vox, "samples": n_s, **t,
                       "mean_iterations": float(np.mean(box["res"].n_iter)),
                       "converged_fraction": float(np.mean(box["res"].status == 0)),
                       "bytes_min": lm_bytes(n_vox, n_s, n_p)}  # fmt: skip
                _rates(row, kms, copy_gbps, None, None)
                rows.append(row)
                log(f"timing {row['case']} x {n_vox:,}: kernel {kms} ms, "
                    f"call {t['call_ms_median']:.1f} ms")  # fmt: skip
                del pr, y, box
            except Exception as exc:
                rows.append({"kernel": "fit/lm_fit.cu", "case": f"{model} {n_vox}",
                             "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
        for n_vox in osvd_sizes:
            if budget.left() < 60:
                rows.append({"kernel": "dsc/osvd_select.cu", "case": f"osvd {n_vox}",
                             "error": "skipped: time budget spent"})  # fmt: skip
                continue
            try:
                pr = osvd_problem(n_vox, seed=4)
                plan = osvd_mod.make_plan(pr["aif"], pr["dt_s"])
                xp = device.xp
                conc = xp.asarray(pr["conc"])
                coef = osvd_mod.coefficients(conc, plan, xp)
                select = osvd_mod.select_host if device.dry_run else osvd_mod.select_cupy

                def sel(coef=coef, plan=plan, select=select) -> None:
                    select(coef, plan)

                def whole_osvd(conc=conc, pr=pr, plan=plan, xp=xp) -> None:
                    osvd_mod.osvd(conc, pr["aif"], pr["dt_s"], xp=xp, plan=plan)

                t = time_case(device, timer, sel, repeats=5)
                whole = time_case(device, timer, whole_osvd, repeats=3)
                nbytes, flops = osvd_cost(n_vox, plan)
                kms = t["kernel_ms_median"]
                row = {"kernel": "dsc/osvd_select.cu", "case": "osvd_select<float>",
                       "voxels": n_vox, "samples": int(plan.n), **t,
                       "osvd_total_ms_median": whole["call_ms_median"],
                       "bytes_min": nbytes, "flops_est": flops}  # fmt: skip
                _rates(row, kms, copy_gbps, flops, fma_gflops)
                rows.append(row)
                log(f"timing osvd x {n_vox:,}: select kernel {kms} ms, "
                    f"oSVD total {whole['call_ms_median']:.1f} ms")  # fmt: skip
            except Exception as exc:
                rows.append({"kernel": "dsc/osvd_select.cu", "case": f"osvd {n_vox}",
                             "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
    return rows


def _rates(row: dict, kernel_ms: float | None, copy_gbps, flops, fma_gflops) -> None:
    ms = kernel_ms if kernel_ms is not None else row["call_ms_median"]
    row["voxels_per_s_kernel"] = row["voxels"] / (ms * 1e-3) if kernel_ms is not None else None
    row["voxels_per_s_call"] = row["voxels"] / (row["call_ms_median"] * 1e-3)
    gbps = row["bytes_min"] / (ms * 1e-3) / 1e9
    row["bandwidth_gbps"] = gbps
    row["bandwidth_pct_of_copy"] = 100.0 * gbps / copy_gbps if copy_gbps else None
    if flops is not None:
        gf = flops / (ms * 1e-3) / 1e9
        row["gflops_est"] = gf
        row["flops_pct_of_fma_peak"] = 100.0 * gf / fma_gflops if fma_gflops else None


# -- report ---------------------------------------------------------------------------------------
def summarize(report: dict[str, Any]) -> dict[str, Any]:
    tests = report["gpu_tests"]
    parity = report["parity"]
    timings = report["timings"]
    failed_parity = [p for p in parity if p.get("ok") is False]
    timing_errors = [t for t in timings if "error" in t and not t["error"].startswith("skipped")]
    ok = bool(tests.get("ok", False)) and not failed_parity and not timing_errors
    parts = []
    if tests.get("collected_only"):
        parts.append(f"{tests.get('tests', 0)} gpu tests collected (dry run)")
    elif tests.get("skipped_stage"):
        parts.append("gpu tests not run (--skip-tests)")
    else:
        parts.append(f"gpu tests: {tests.get('passed', 0)} passed, {tests.get('failed', 0)} "
                     f"failed, {tests.get('skipped', 0)} skipped")  # fmt: skip
        if tests.get("modules_not_importable"):
            parts.append(f"{len(tests['modules_not_importable'])} test modules not importable "
                         "here (see JSON)")  # fmt: skip
    n_ok = sum(1 for p in parity if p.get("ok"))
    parts.append(f"parity {n_ok}/{len(parity)} ok")
    parts.append(f"{sum(1 for t in timings if 'error' not in t)} timings")
    return {"ok": ok, "text": "; ".join(parts)}


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return format(v, spec) if np.isfinite(v) else "n/a"
    return str(v)


def render_md(report: dict[str, Any]) -> str:
    d = report["device_info"]
    c = report["ceilings"]
    lines = [
        f"# GPU validation: {report['device']} ({report['datetime']})",
        "",
        f"Generated by `{report['command']}`; do not edit by hand.",
        "",
        f"- verdict: **{'PASS' if report['summary']['ok'] else 'FAIL'}** — "
        f"{report['summary']['text']}",
        f"- commit: {report['commit'] or 'unknown'}{' (dirty)' if report['dirty'] else ''}",
        "- device: " + ", ".join(f"{k} {v}" for k, v in d.items()),
        f"- python {report['python']}, numpy {report['numpy']}; elapsed "
        f"{report['elapsed_s']:.0f} s",
        "",
        "## Ceilings (measured)",
        "",
        f"- device-to-device copy: {_fmt(c.get('copy_gbps'), '.0f')} GB/s "
        f"({_fmt(c.get('copy_bytes'))} bytes moved)",
        f"- FP32 FMA: {_fmt(c.get('fma_gflops'), '.0f')} GFLOP/s; "
        f"SGEMM {c.get('sgemm_n')}²: {_fmt(c.get('sgemm_gflops'), '.0f')} GFLOP/s",
        "",
        "## gpu tests",
        "",
        f"`{report['gpu_tests'].get('command', '-')}` → exit "
        f"{report['gpu_tests'].get('returncode')}: {report['summary']['text'].split(';')[0]}",
        "",
        "## Parity (CuPy kernel vs NumPy twin)",
        "",
        "LM rows (rule: gpuperf.cuda.parity.fit_parity): `agree` = float64 voxels with the same "
        "status and parameters (rtol 1e-6); `f32 ok` = float32 voxels with the same parameters "
        "(rtol 2e-3) or an equally good fit (chi2 within 1 %).",
        "",
        "| kernel | case | compared | voxels | agree | max rel diff | f32 ok | status agree | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["parity"]:
        if "error" in p:
            lines.append(f"| {p['kernel']} | {p['case']} | - | - | - | - | - | - | "
                         f"{p['ok']}: {p['error']} |")  # fmt: skip
            continue
        note = f" — {p['note']}" if "note" in p else ""
        lines.append(
            f"| {p['kernel']} | {p['case']} | {p['compared']} vs {p['against']} | {p['voxels']:,} "
            f"| {p['agree_fraction']:.4f} | {_fmt(p['max_rel_diff_agreeing'])} | "
            f"{_fmt(p.get('f32_same_or_equally_good'), '.4f')} | "
            f"{p['status_agree_fraction']:.4f} | {p['ok']}{note} |"
        )
    lines += [
        "",
        "## Kernel timings (CUDA events; median of repeats after a warm-up)",
        "",
        "Kernel: the launches alone; call: the whole library call from host arrays (transfers "
        "included). Bandwidth: the least bytes the kernel must move / kernel time.",
        "",
        "| kernel | case | voxels | kernel ms | call ms | voxels/s (kernel) | voxels/s (call) "
        "| GB/s (% copy) | GFLOP/s est. (% FMA) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in report["timings"]:
        if "error" in t:
            lines.append(f"| {t['kernel']} | {t['case']} | | | | | | | | {t['error']} |")
            continue
        notes = []
        if "mean_iterations" in t:
            notes.append(f"{t['mean_iterations']:.1f} iterations, "
                         f"{100 * t['converged_fraction']:.1f}% converged")  # fmt: skip
        if "osvd_total_ms_median" in t:
            notes.append(f"whole oSVD (GEMM + select) {t['osvd_total_ms_median']:.2f} ms")
        gfl = "-"
        if "gflops_est" in t:
            gfl = f"{_fmt(t['gflops_est'], '.0f')} ({_fmt(t.get('flops_pct_of_fma_peak'), '.0f')}%)"
        lines.append(
            f"| {t['kernel']} | {t['case']} | {t['voxels']:,} | {_fmt(t['kernel_ms_median'])} | "
            f"{_fmt(t['call_ms_median'])} | {_fmt(t['voxels_per_s_kernel'])} | "
            f"{_fmt(t['voxels_per_s_call'])} | {_fmt(t['bandwidth_gbps'], '.0f')} "
            f"({_fmt(t['bandwidth_pct_of_copy'], '.0f')}%) | {gfl} | {'; '.join(notes)} |"
        )
    lines += ["", "## gpu test output (tail)", "", "```", report["gpu_tests"].get("tail", ""),
              "```", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="No GPU: NumPy/host build, tiny sizes.")
    ap.add_argument("--quick", action="store_true", help="Fewer models and sizes.")
    ap.add_argument("--skip-tests", action="store_true", help="Do not run the gpu tests.")
    ap.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="Folder for <date>-<device>.json/.md (default bench/results).",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="Stop starting new stages after this many seconds (default 420).",
    )
    ap.add_argument("--tests-timeout-s", type=float, default=240.0)
    ap.add_argument("--no-results-md", action="store_true",
                    help="Do not regenerate bench/RESULTS.md.")  # fmt: skip
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    if not args.dry_run:
        from gpuperf.backend import gpu_status

        usable, detail = gpu_status()
        if not usable:
            print(f"gpu_check: no usable GPU ({detail}).\nRun it on a machine with an NVIDIA "
                  "GPU and CuPy, or pass --dry-run to exercise the script on NumPy.",
                  file=sys.stderr)  # fmt: skip
            return 2
    device = Device(args.dry_run)
    log(f"device: {device.name}")
    commit, dirty = git_commit()
    command = (
        "PYTHONPATH=. python bench/gpu_check.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device.name,
        "device_info": device.info,
        "dry_run": args.dry_run,
        "commit": commit,
        "dirty": dirty,
        "command": command,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(terse=True),
    }
    if args.skip_tests:
        report["gpu_tests"] = {"skipped_stage": True, "ok": True, "tail": "(not run)"}
    else:
        log("running the gpu tests" + (" (collect only: dry run)" if args.dry_run else ""))
        report["gpu_tests"] = run_gpu_tests(device, budget, args.tests_timeout_s)
        log(f"gpu tests: exit {report['gpu_tests']['returncode']}")
    log("parity checks")
    report["parity"] = run_parity(device, budget, args.quick)
    log("ceilings")
    try:
        report["ceilings"] = measure_ceilings(device)
    except Exception as exc:
        report["ceilings"] = {"error": f"{type(exc).__name__}: {exc}"}
    log("kernel timings")
    report["timings"] = run_timings(device, budget, report["ceilings"], args.quick)
    report["elapsed_s"] = budget.elapsed
    report["summary"] = summarize(report)
    date = report["datetime"][:10]
    stem = f"{date}-{slug(device.name if not args.dry_run else 'dry-run')}"
    json_path = args.out / f"{stem}.json"
    md_path = args.out / f"{stem}.md"
    write_atomic(json_path, json.dumps(_jsonable(report), indent=2) + "\n")
    write_atomic(md_path, render_md(report))
    log(f"wrote {json_path} and {md_path}")
    if not args.no_results_md and args.out.resolve() == (REPO / "bench" / "results").resolve():
        from gpuperf.benchmarks.results import update_results

        md, _ = update_results(None, REPO / "bench")
        log(f"regenerated {md}")
    log(("PASS: " if report["summary"]["ok"] else "FAIL: ") + report["summary"]["text"])
    return 0 if report["summary"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
