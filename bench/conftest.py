"""Shared fixtures and the ``extra_info`` convention for the gpuperf benchmark suite.

Run with ``gpuperf bench`` (which calls pytest-benchmark on this folder and prints one table),
or directly: ``python -m pytest bench -q --benchmark-json=out.json``. Benchmark files are named
``bench_*.py`` (collected by the hook below) and their functions ``test_*``; size with
``--bench-size laptop|brain`` (or ``GPUPERF_BENCH_SIZE``).

The ``extra_info`` convention
-----------------------------
Every benchmark records what it measured in ``benchmark.extra_info`` so that
:mod:`gpuperf.benchmarks.table` can build one table and compute ratios. Use :func:`record`
(exposed as the ``record`` fixture) rather than writing the keys by hand:

``stage`` (str, required)
    The pipeline step measured, dotted: ``"dsc.deconvolution"``, ``"dsc.pipeline"``,
    ``"asl.fit"``, ``"asl.quantify"``, ``"fit.lm"``, ``"cohort.run"``, ...
``method`` (str, required)
    The algorithm: ``"ssvd"``, ``"csvd"``, ``"osvd"``, ``"tikhonov"``, ``"buxton_pcasl"``,
    ``"consensus"``, ``"gammavar"``, ... Baselines use the method name they implement, so that
    a baseline and a gpuperf row of the same (stage, method) are compared.
``backend`` (str, required)
    ``"numpy"`` or ``"cupy"`` for gpuperf's own code; for a baseline, the library it runs on
    (``"numpy"``, ``"scipy"``, ``"osipy"``).
``device`` (str, required)
    Human-readable device: the GPU's name, or the CPU's model and core count
    (``"AMD EPYC (2 cores)"``). :func:`record` fills it in when omitted.
``voxels`` (int, required)
    Voxels (or independent fits) processed by ONE call of the benchmarked function. The table
    divides this by the median time to give voxels/s, so baselines may run on fewer voxels
    than gpuperf (voxel loops are slow) and still be compared fairly by rate.
``baseline`` (str, only for baselines)
    Name of the reference implementation: ``"osipy"`` (osipy 0.1.4), ``"svd_loop"``
    (voxel-by-voxel SVD, as MATLAB toolboxes run), ``"scipy_loop"`` (voxel-by-voxel
    ``scipy.optimize.curve_fit``, as ASLPrep fits multi-PLD ASL), ``"numpy_sweep"`` (plain
    vectorised NumPy). Absent (or None) for gpuperf's own rows.
``baseline_version`` (str, optional)
    Version of the baseline library (e.g. osipy's ``__version__``).
``size`` (str)
    ``"laptop"`` or ``"brain"``: filled by :func:`record` from the session's size.
``frames`` (int, optional)
    Time samples (or PLDs) per voxel.
``variant`` (str, optional)
    What tells apart rows of one stage, method and backend (``"prefetch2"``, ``".nii.gz"``);
    default: the pytest parameter id without the backend and method.
``note`` (str, optional)
    Anything a reader of the table must know (e.g. "float32", "includes host<->device copy").

Ratios: for every gpuperf row, the table reports ``voxels/s(row) / voxels/s(baseline)`` for
each baseline row with the same ``stage`` and ``method`` measured in the same run. A ratio above
1 means gpuperf is faster.

Fixtures
--------
``bench_size``  "laptop" (default) or "brain"; from ``--bench-size`` or ``GPUPERF_BENCH_SIZE``.
``sizes``       :class:`Sizes` for that size: voxel counts for gpuperf and for slow baselines.
``backend``     parametrised over ``numpy`` and ``cupy`` (cupy skipped without a usable GPU).
``record``      :func:`record`, to fill ``benchmark.extra_info``.
``rng``         a seeded ``numpy.random.Generator``.

Timing on the GPU: wrap the benchmarked call with :func:`synced` so that queued kernels are
finished before the clock stops (``benchmark(synced(backend, fn), *args)``).

Import helpers from the library, not from this file:
``from gpuperf.benchmarks.conventions import record, synced`` and baselines from
``gpuperf.benchmarks.baselines`` (``svd_loop``, ``numpy_circulant_sweep``, ``scipy_loop_asl_fit``,
``osipy_osvd``, ``osipy_asl_fit``, ``osipy_version``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gpuperf.benchmarks.conventions import (  # noqa: F401  (re-exported for bench files)
    REQUIRED_KEYS,
    SIZES,
    SIZES_ENV,
    Sizes,
    record,
    synced,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-size",
        choices=sorted(SIZES),
        default=None,
        help=f"Problem size (default: ${SIZES_ENV} or 'laptop').",
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    """Collect ``bench_*.py`` (functions named ``test_*``) when the folder itself is run.

    Files named on the command line are collected by pytest anyway; returning a second module
    for them would run each benchmark twice.
    """
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config: pytest.Config) -> None:
    # record() reads the size from the environment, so fixtures and helpers agree.
    os.environ[SIZES_ENV] = _size_name(config)
    _compile_package()


def _compile_package() -> None:
    """Compile gpuperf's bytecode once, so that the fresh ``gpuperf`` processes of the
    whole-process and start-up rows load ``.pyc`` files as an installed wheel does (pip compiles
    at install). A checkout run under ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile
    every gpuperf module in every process (about 0.3 s), which no user's install pays; the
    baselines (osipy, scipy) are installed packages with their bytecode."""
    import compileall

    import gpuperf

    compileall.compile_dir(str(Path(gpuperf.__file__).parent), quiet=2)


def _size_name(config: pytest.Config) -> str:
    name = config.getoption("--bench-size", default=None) or os.environ.get(SIZES_ENV, "laptop")
    if name not in SIZES:
        raise pytest.UsageError(f"bench size must be one of {sorted(SIZES)}; got {name!r}")
    return name


@pytest.fixture(scope="session")
def bench_size(pytestconfig: pytest.Config) -> str:
    return _size_name(pytestconfig)


@pytest.fixture(scope="session")
def sizes(bench_size: str) -> Sizes:
    return SIZES[bench_size]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20260125)


@pytest.fixture(params=["numpy", "cupy"])
def backend(request: pytest.FixtureRequest):
    """gpuperf Backend, once per available backend (cupy skipped without a GPU)."""
    from gpuperf.backend import get_backend, gpu_status

    if request.param == "cupy":
        usable, detail = gpu_status()
        if not usable:
            pytest.skip(f"cupy backend: {detail}")
        return get_backend("gpu")
    return get_backend("cpu")


@pytest.fixture(name="record")
def record_fixture() -> Callable[..., None]:
    return record


@pytest.fixture(autouse=True)
def _check_extra_info(request: pytest.FixtureRequest):
    """After each benchmark, fail loudly when the convention's required keys are missing."""
    yield
    bm = request.node.funcargs.get("benchmark") if hasattr(request.node, "funcargs") else None
    if bm is None or not getattr(bm, "stats", None):
        return
    missing = [k for k in REQUIRED_KEYS if k not in bm.extra_info]
    if missing:
        pytest.fail(
            f"{request.node.nodeid}: benchmark.extra_info lacks {missing}; "
            "use the `record` fixture (see bench/conftest.py)"
        )
