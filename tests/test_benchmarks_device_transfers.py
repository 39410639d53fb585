"""Device residency (issue 12, item 4), counted on the emulated GPU: host <-> device copies.

The CuPy test double (tests/emulated_cupy.py) records every upload (``cupy.asarray`` of a NumPy
array) and download (``.get()``, ``cupy.asnumpy``) in ``STATE.uploads``/``STATE.downloads`` as
``(shape, nbytes)``. What holds is asserted; what issue 12 asks for and the code does not do yet
is a strict ``xfail`` naming the round trip, so the test turns red (XPASS) when it is fixed and
the mark must go.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.emulated_gpu, pytest.mark.usefixtures("emulated_gpu")]


def _dsc(state):
    from gpuperf.dsc import DSCModel
    from gpuperf.dsc.simulate import phantom_arrays

    ph = phantom_arrays(shape=(12, 12, 2), noise_sd=0.005, seed=3)
    state.uploads.clear()
    state.downloads.clear()
    fit = DSCModel(ph["te_s"], ph["tr_s"], device="gpu", method="osvd", leakage="bsw").fit(
        ph["signal"], aif="auto"
    )
    n_vox, n_t = int(fit.mask.sum()), ph["signal"].shape[-1]
    return fit, n_vox, n_t


def _block(entries, n_vox, n_t):
    """Copies as large as a (V, T) block (any dtype): the data, not a per-voxel result."""
    return [e for e in entries if len(e[0]) == 2 and e[0][0] >= n_vox and e[0][1] >= n_t]


def test_dsc_signal_goes_up_once(emulated_gpu):
    fit, n_vox, n_t = _dsc(emulated_gpu.STATE)
    assert fit.info["backend"] == "cupy"
    up = _block(emulated_gpu.STATE.uploads, n_vox, n_t)
    assert len(up) == 1, up  # the gathered (V, T) block, once; plans and AIFs are small


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="open (issue 12 item 4): automatic AIF selection runs on the host, so the (V, T) "
    "dR2* block comes back (gpuperf/dsc/model.py: backend.to_host(dr2s))",
)
def test_dsc_no_block_download_between_stages(emulated_gpu):
    _, n_vox, n_t = _dsc(emulated_gpu.STATE)
    assert _block(emulated_gpu.STATE.downloads, n_vox, n_t) == []


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="open (issue 12 item 4): each start of the arterial multi-start calls fit_lm with "
    "host arrays, so the curves go up once per start (gpuperf/asl/arterial.py)",
)
def test_asl_arterial_multistart_uploads_curves_once(emulated_gpu):
    from gpuperf.asl.model import ASLModel

    plds = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5)
    model = ASLModel("PCASL", plds, 1.8, arterial=True)
    rng = np.random.default_rng(1)
    n = 60
    truth = np.stack(
        [rng.uniform(20, 80, n), rng.uniform(0.6, 1.8, n), rng.uniform(0.5, 2, n),
         rng.uniform(0.3, 0.9, n)], 1
    )  # fmt: skip
    y, _ = model.kinetic_model.evaluate(np, truth, model.sample_times(), model.consts())
    y = (y + rng.normal(0, 2e-4, y.shape)).astype(np.float32)
    model.device = "gpu"
    state = emulated_gpu.STATE
    state.uploads.clear()
    fit = model.fit(y, 1.0)
    assert fit.backend == "cupy"
    assert len(_block(state.uploads, n, len(plds))) == 1
