"""Shared test configuration.

- ``gpu`` marker: the test needs CuPy and a CUDA device; skipped (with the reason) elsewhere.
- ``emulated_gpu`` marker and fixture: the test runs gpuperf's CuPy paths on the CuPy test
  double (tests/emulated_cupy.py) installed as ``sys.modules["cupy"]``; runs everywhere (CI).
- ``shared_data`` fixture: the project's reference data in ``../shared/data``; a user's clone
  without it skips those tests, CI (``CI=true``) fails instead, since there it must be present.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    from gpuperf.backend import gpu_status

    usable, detail = gpu_status()
    if usable:
        return
    skip_gpu = pytest.mark.skip(reason=f"needs a CUDA GPU with CuPy: {detail}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def require_shared(*parts: str) -> Path:
    """Path under ../shared/data, skipping (or failing in CI) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        msg = f"reference data {path} is absent (it ships beside the repo as ../shared/data)"
        if in_ci():
            pytest.fail(msg + "; CI must have it")
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_data() -> Path:
    return require_shared()


@pytest.fixture
def emulated_gpu(monkeypatch):
    """Install the CuPy test double as ``cupy`` for one test and reset gpuperf's caches around
    it, so nothing of the emulated device leaks into other tests."""
    import emulated_cupy as fake

    from gpuperf import backend
    from gpuperf.cuda import source

    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delenv("GPUPERF_DISABLE_GPU", raising=False)
    monkeypatch.setattr(fake, "STATE", type(fake.STATE)(**vars(fake.STATE)))
    fake.STATE.launches = []
    fake.STATE.uploads, fake.STATE.downloads = [], []
    backend.gpu_status.cache_clear()
    source._MODULES.clear()
    yield fake
    backend.gpu_status.cache_clear()
    source._MODULES.clear()
