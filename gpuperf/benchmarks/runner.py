"""Run the pytest-benchmark suite of the checkout's ``bench/`` folder and collect its JSON.

The benchmarks live in the repository (``bench/``), not in the installed package: a wheel
install has no ``bench/`` and :func:`find_bench_dir` says so. ``GPUPERF_BENCH_DIR`` points at
another checkout's ``bench/``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from gpuperf.benchmarks.conventions import SIZES, SIZES_ENV
from gpuperf.benchmarks.table import load_benchmark_json
from gpuperf.errors import GpuperfError

BENCH_DIR_ENV = "GPUPERF_BENCH_DIR"


class BenchmarkSuiteError(GpuperfError):
    """The benchmark suite could not be found or did not produce results."""


def find_bench_dir(explicit: str | PathLike | None = None) -> Path:
    """The ``bench/`` folder to run.

    Order: ``explicit``, then ``$GPUPERF_BENCH_DIR``, then ``bench/`` beside the ``gpuperf``
    package (an editable install or a source checkout).

    Raises
    ------
    BenchmarkSuiteError
        When no folder with a ``conftest.py`` is found (e.g. gpuperf installed from a wheel).
    """
    import gpuperf

    if explicit is not None:
        origin, path = "--bench-dir", Path(explicit)
    elif os.environ.get(BENCH_DIR_ENV):
        origin, path = f"${BENCH_DIR_ENV}", Path(os.environ[BENCH_DIR_ENV])
    else:
        origin, path = "the checkout", Path(gpuperf.__file__).resolve().parents[1] / "bench"
    if (path / "conftest.py").is_file():
        return path.resolve()
    raise BenchmarkSuiteError(
        f"{path}: no benchmark suite (bench/conftest.py) found from {origin}. The benchmarks "
        "live in the gpuperf repository, not in the installed package: clone the repository "
        "and `pip install -e .` it, or set GPUPERF_BENCH_DIR to a checkout's bench/ folder."
    )


@dataclass
class SuiteRun:
    """Result of one run of the benchmark suite.

    Attributes
    ----------
    data : dict
        The pytest-benchmark JSON.
    command : str
        The user-level command, for RESULTS.md.
    pytest_command : list of str
        The pytest invocation actually run.
    returncode : int
        pytest's exit status (1: some benchmarks failed; their rows are missing).
    output : str
        pytest's combined output.
    bench_dir : Path
        The benchmark folder that was run (its parent is the checkout).
    load_average : (float, float) or None
        1-minute load average before and after the run: other work on the machine inflates
        absolute times (ratios within one run are affected alike), so it is recorded.
    """

    data: dict[str, Any]
    command: str
    pytest_command: list[str]
    returncode: int
    output: str
    bench_dir: Path
    load_average: tuple[float, float] | None = None


def pytest_command(
    bench_dir: Path,
    json_path: Path,
    size: str = "laptop",
    keyword: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The pytest invocation for the suite (pure: tested without running it)."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(bench_dir),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--rootdir={bench_dir.parent}",
        f"--bench-size={size}",
        f"--benchmark-json={json_path}",
        "--benchmark-sort=fullname",
    ]
    if keyword:
        cmd += ["-k", keyword]
    cmd += list(extra_args)
    return cmd


def run_suite(
    size: str = "laptop",
    keyword: str | None = None,
    bench_dir: str | PathLike | None = None,
    extra_args: Sequence[str] = (),
    command: str | None = None,
    stream: Any = None,
) -> SuiteRun:
    """Run pytest-benchmark on ``bench/`` and return its JSON.

    Parameters
    ----------
    size : {'laptop', 'brain'}
        Problem size (``--bench-size``): laptop (minutes on a laptop CPU) or brain (a 2 mm
        whole brain, ~6.5e5 voxels). Each benchmark file picks its sizes for both.
    keyword : str, optional
        pytest ``-k`` expression selecting benchmarks.
    bench_dir : path-like, optional
        See :func:`find_bench_dir`.
    extra_args : sequence of str
        More pytest arguments.
    command : str, optional
        The command to record (default: ``gpuperf bench --size <size> [-k ...]``).
    stream : file-like, optional
        Where pytest's output is echoed line by line (e.g. ``sys.stderr``); None: captured only.

    Raises
    ------
    BenchmarkSuiteError
        No suite, no benchmark selected, or pytest could not run.
    """
    if size not in SIZES:
        raise BenchmarkSuiteError(f"size must be one of {sorted(SIZES)}; got {size!r}")
    bench = find_bench_dir(bench_dir)
    import importlib.util

    for module, dist in (("pytest", "pytest"), ("pytest_benchmark", "pytest-benchmark")):
        if importlib.util.find_spec(module) is None:
            raise BenchmarkSuiteError(
                f"gpuperf bench needs {dist}: pip install 'gpuperf[test]' (or {dist})"
            )
    repo = bench.parent
    if command is None:
        command = f"gpuperf bench --size {size}" + (
            f" -k {shlex.quote(keyword)}" if keyword else ""
        )
    env = dict(os.environ)
    env[SIZES_ENV] = size
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="gpuperf-bench-") as tmp:
        json_path = Path(tmp) / "benchmark.json"
        cmd = pytest_command(bench, json_path, size, keyword, extra_args)
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=repo,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        except OSError as exc:
            raise BenchmarkSuiteError(f"could not start pytest: {exc}") from None
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if stream is not None:
                stream.write(line)
                stream.flush()
        rc = proc.wait()
        output = "".join(lines)
        if rc == 5:
            raise BenchmarkSuiteError(
                f"no benchmark selected in {bench}" + (f" by -k {keyword!r}" if keyword else "")
            )
        if not json_path.exists():
            tail = "\n".join(output.splitlines()[-30:])
            raise BenchmarkSuiteError(f"pytest (exit {rc}) wrote no benchmark JSON:\n{tail}")
        data = load_benchmark_json(json_path)
    return SuiteRun(
        data=data,
        command=command,
        pytest_command=cmd,
        returncode=rc,
        output=output,
        bench_dir=bench,
        load_average=None if load_before is None else (load_before, _load_average() or 0.0),
    )


def _load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # not on every platform
        return None
