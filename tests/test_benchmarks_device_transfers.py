"""Device residency (issue 12, item 4), counted on the emulated GPU: host <-> device copies.

The CuPy test double (tests/emulated_cupy.py) records every upload (``cupy.asarray`` of a NumPy
array) and download (``.get()``, ``cupy.asnumpy``) in ``STATE.uploads``/``STATE.downloads`` as
``(shape, nbytes)``. The stage tests assert the exact copies of each stage (DSC: signal and AIF
selection -> leakage -> deconvolution; ASL: tissue fit -> arterial multi-start; one LM fit with
shared bounds): a new round trip of the data, or a copy per start, fails them. What goes up and
down per stage is documented in docs/ARCHITECTURE.md ("Device residency").
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


def test_dsc_no_block_download_between_stages(emulated_gpu):
    _, n_vox, n_t = _dsc(emulated_gpu.STATE)
    assert _block(emulated_gpu.STATE.downloads, n_vox, n_t) == []


PLDS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5)


def _asl_arterial_data(n: int = 60):
    from gpuperf.asl.model import ASLModel

    model = ASLModel("PCASL", PLDS, 1.8, arterial=True)
    rng = np.random.default_rng(1)
    truth = np.stack(
        [rng.uniform(20, 80, n), rng.uniform(0.6, 1.8, n), rng.uniform(0.5, 2, n),
         rng.uniform(0.3, 0.9, n)], 1
    )  # fmt: skip
    y, _ = model.kinetic_model.evaluate(np, truth, model.sample_times(), model.consts())
    y = (y + rng.normal(0, 2e-4, y.shape)).astype(np.float32)
    model.device = "gpu"
    return model, y


def test_asl_arterial_multistart_uploads_curves_once(emulated_gpu):
    model, y = _asl_arterial_data()
    n = y.shape[0]
    state = emulated_gpu.STATE
    state.uploads.clear()
    fit = model.fit(y, 1.0)
    assert fit.backend == "cupy"
    assert len(_block(state.uploads, n, len(PLDS))) == 1


# -- copies per stage ------------------------------------------------------------------------------
class _Stages:
    """Attributes the emulated GPU's copies to stages: ``wrap`` replaces a method so that the
    copies made while it runs are logged under a label; ``cut(label)`` logs everything since
    the last mark (a stage that is not one call)."""

    def __init__(self, state):
        self.state = state
        self.log: dict[str, tuple[list, list]] = {}
        self._mark = (len(state.uploads), len(state.downloads))

    def cut(self, label: str) -> None:
        st = self.state
        u0, d0 = self._mark
        up, down = self.log.setdefault(label, ([], []))
        up += [shape for shape, _ in st.uploads[u0:]]
        down += [shape for shape, _ in st.downloads[d0:]]
        self._mark = (len(st.uploads), len(st.downloads))

    def wrap(self, monkeypatch, obj, name: str, label: str, before: str) -> None:
        fn = getattr(obj, name)

        def wrapped(*a, **k):
            self.cut(before)
            try:
                return fn(*a, **k)
            finally:
                self.cut(label)

        monkeypatch.setattr(obj, name, wrapped)


def test_dsc_copies_per_stage(emulated_gpu, monkeypatch):
    """Signal up once; AIF selection brings down the areas (V,) and the candidates' curves only;
    leakage (BSW) and deconvolution (oSVD) bring down no curves, only their (V,) maps at the end;
    the usable mask is not downloaded twice."""
    from gpuperf.backend import get_backend
    from gpuperf.dsc import DSCModel
    from gpuperf.dsc.simulate import phantom_arrays

    ph = phantom_arrays(shape=(12, 12, 2), noise_sd=0.005, seed=3)
    get_backend("gpu")  # the probe's copies are not a stage's
    model = DSCModel(ph["te_s"], ph["tr_s"], device="gpu", method="osvd", leakage="bsw")
    stages = _Stages(emulated_gpu.STATE)
    prepared = model.prepare(ph["signal"], aif="auto")
    stages.cut("signal + AIF selection")
    v, t = prepared.dr2s.shape
    n_cand = int(np.ceil(0.1 * int(prepared.usable.sum())))
    stages.wrap(monkeypatch, model.leakage_correction, "correct", "leakage", "before leakage")
    stages.wrap(monkeypatch, model.deconvolution, "run", "deconvolution", "after leakage")
    fit = model.fit_batch([prepared])[0]
    stages.cut("maps")
    log = stages.log
    assert fit.info["backend"] == "cupy"

    up, down = log["signal + AIF selection"]
    assert up[0] == (v, t) and len(up) == 2 and up[1][0] <= n_cand, up  # block, candidate index
    c = up[1][0]
    assert down == [(v,), (v,), (c, t)], down  # usable flags, areas, the candidates' curves
    assert log["before leakage"] == ([], []), log["before leakage"]  # usable known already
    up, down = log["leakage"]
    # BSW, two passes: per pass an index of reference voxels, a (T, 2) solve and the reference
    # mean (T,) and K2 of the references; then the final solve, the running integral (T,) and
    # the K2 map (V,)
    assert [len(s) for s in up] == [1, 2, 1, 2, 1, 2, 1] and all(s[0] < v for s in up), up
    assert [s[0] == t for s in down] == [True, False, True, False, True, False], down
    assert down[-1] == (v,) and all(s[0] < v for s in down[1:-1:2]), down
    up = log["after leakage"][0] + log["deconvolution"][0]
    down = log["after leakage"][1] + log["deconvolution"][1]
    assert down == [] and all(s[0] < v for s in up), (up, down)  # plans up, nothing down
    up, down = log["maps"]
    # status and the seven float maps (cbf, cbv, mtt, tmax, ttp, threshold, oi)
    assert up == [] and down == [(v,)] * 8, (up, down)


def test_asl_arterial_copies_per_start(emulated_gpu):
    """The group means go up once for every fit of the kinetic fit; each start of the arterial
    multi-start is built on the device from its (V,) inputs (uploaded once): per start only the
    (P,) bounds, x, weights and constants go up, and each launch's five results come down."""
    from gpuperf.asl.arterial import abat_candidates

    model, y = _asl_arterial_data()
    n, u = y.shape[0], len(PLDS)
    n_starts = 3 * len(abat_candidates(model.sample_times())[0])
    state = emulated_gpu.STATE
    model.fit(y[:2], 1.0)  # compile and probe outside the count
    state.uploads.clear()
    state.downloads.clear()
    state.launches.clear()
    fit = model.fit(y, 1.0)
    assert fit.backend == "cupy"
    launches = [g[0] for g in state.launches if g[0].startswith("lm_fit")]
    assert sum("Arterial" in g for g in launches) == n_starts  # one launch per start
    per_voxel_up = [s for s, _ in state.uploads if s[:1] == (n,)]
    # ybar (V, U); the tissue fit's start (V, 2); the arterial starts' CBF and ATT (V,)
    assert sorted(per_voxel_up) == sorted([(n, u), (n, 2), (n,), (n,)]), per_voxel_up
    assert all(s[0] < n for s, _ in state.uploads if s[:1] != (n,))  # (P,), (U,), kink rows
    per_voxel_down = [s for s, _ in state.downloads if s[:1] == (n,)]
    # params, stderr, chi2, n_iter, status of the tissue fit and of every start
    assert len(per_voxel_down) == 5 * (1 + n_starts)
    assert len(state.downloads) == 5 * len(launches)  # kink refits: their rows' results


def test_lm_shared_bounds_upload_p_values(emulated_gpu):
    """Shared start values and bounds go up as (P,) arrays, not as (V, P) copies; the kernel
    reads them per parameter and the results equal the per-voxel fit's bit for bit."""
    from gpuperf.fit import fit_lm

    rng = np.random.default_rng(4)
    v, n_t = 500, 12
    t = np.linspace(0, 60, n_t)
    y = (1000 * np.exp(-t[None] / rng.uniform(10, 40, (v, 1)))).astype(np.float32)
    y += rng.normal(0, 2, y.shape).astype(np.float32)
    p0, lo, hi = np.array([900.0, 20.0]), np.array([0.0, 1.0]), np.array([5000.0, 80.0])
    state = emulated_gpu.STATE
    fit_lm("monoexp", t, y[:2], p0, lower=lo, upper=hi, device="gpu")  # compile outside
    state.uploads.clear()
    shared = fit_lm("monoexp", t, y, p0, lower=lo, upper=hi, device="gpu")
    shared_up = list(state.uploads)
    state.uploads.clear()
    tile = lambda a: np.tile(a, (v, 1))  # noqa: E731
    per_voxel = fit_lm("monoexp", t, y, tile(p0), lower=tile(lo), upper=tile(hi), device="gpu")
    per_voxel_up = list(state.uploads)
    assert shared.backend == "cupy"
    n_par, item = 2, 4
    # y, x (N, 1), one constant placeholder, p0, lower, upper as P values each
    assert sorted(shared_up) == sorted(
        [((v, n_t), v * n_t * item), ((n_t, 1), n_t * item), ((1,), item)]
        + [((n_par,), n_par * item)] * 3
    ), shared_up
    assert sum(b for _, b in per_voxel_up) - sum(b for _, b in shared_up) == 3 * (
        v * n_par * item - n_par * item
    )
    mixed = fit_lm("monoexp", t, y, p0, lower=tile(lo), upper=hi, device="gpu")
    for k in ("params", "stderr", "chi2", "n_iter", "status"):
        np.testing.assert_array_equal(getattr(shared, k), getattr(per_voxel, k))
        np.testing.assert_array_equal(getattr(shared, k), getattr(mixed, k))
    cpu = fit_lm("monoexp", t, y, p0, lower=lo, upper=hi, device="cpu")
    cpu_v = fit_lm("monoexp", t, y, tile(p0), lower=tile(lo), upper=tile(hi), device="cpu")
    for k in ("params", "stderr", "chi2", "n_iter", "status"):
        np.testing.assert_array_equal(getattr(cpu, k), getattr(cpu_v, k))


def test_pinned_transfers_above_the_threshold(emulated_gpu, monkeypatch):
    """Copies of at least PINNED_MIN_BYTES go through pinned host memory, both ways; smaller
    ones do not; the results are those of the plain path, bit for bit."""
    from gpuperf import backend as B
    from gpuperf.dsc import DSCModel
    from gpuperf.dsc.simulate import phantom_arrays

    ph = phantom_arrays(shape=(12, 12, 2), noise_sd=0.005, seed=3)

    def run():
        model = DSCModel(ph["te_s"], ph["tr_s"], device="gpu", method="csvd", leakage="none")
        return model.fit(ph["signal"], aif="auto", return_residue=True)

    state = emulated_gpu.STATE
    plain = run()
    assert state.pinned_transfers == [] and state.pinned_allocs == []
    state.uploads.clear()
    state.downloads.clear()
    v, t = int(plain.mask.sum()), ph["signal"].shape[-1]
    monkeypatch.setattr(B, "PINNED_MIN_BYTES", v * 4)  # the (V,) float32 maps and up
    pinned = run()
    big_up = [(s, b) for s, b in state.uploads if b >= v * 4]
    big_down = [(s, b) for s, b in state.downloads if b >= v * 4]
    assert ((v, t), v * t * 4) in big_up  # the signal block
    assert ((v, t), v * t * 4) in big_down  # the residues
    pinned_up = [(s, b) for d, s, b in state.pinned_transfers if d == "up"]
    pinned_down = [(s, b) for d, s, b in state.pinned_transfers if d == "down"]
    assert ((v, t), v * t * 4) in pinned_up
    assert sorted(pinned_down) == sorted(big_down)  # every download goes through the backend
    assert all(b >= v * 4 for _, b in pinned_up) and set(pinned_up) <= set(big_up)
    assert len(state.pinned_allocs) == len(state.pinned_transfers)
    for name in ("cbf", "cbv", "mtt", "tmax", "ttp", "status", "aif", "residue"):
        np.testing.assert_array_equal(getattr(pinned, name), getattr(plain, name))


def test_backend_pinned_round_trip(emulated_gpu, monkeypatch):
    """Backend.asarray converts into the pinned buffer (values as ``np.asarray(a, dtype)``) and
    to_host returns a pinned C-order copy (also of a transposed device array)."""
    from gpuperf import backend as B

    be = B.get_backend("gpu")
    monkeypatch.setattr(B, "PINNED_MIN_BYTES", 64)
    a = np.random.default_rng(0).normal(size=(40, 7))
    d = be.asarray(a, dtype=np.float32)
    state = emulated_gpu.STATE
    assert state.pinned_transfers[-1] == ("up", (40, 7), 40 * 7 * 4)
    back = be.to_host(d.T)
    assert state.pinned_transfers[-1] == ("down", (7, 40), 40 * 7 * 4)
    assert back.flags.c_contiguous and back.dtype == np.float32
    np.testing.assert_array_equal(back, np.asarray(a, dtype=np.float32).T)
    small = be.to_host(d[:2, :2])  # 16 bytes: the plain path
    assert state.pinned_transfers[-1][1] == (7, 40) and small.shape == (2, 2)


def test_emulated_pinned_copies_check_what_cupy_checks(emulated_gpu):
    import cupy

    from gpuperf.backend import get_backend

    be = get_backend("gpu")
    d = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
    out = be.pinned_empty((3, 4), np.float32)
    assert d.get(out=out) is out and out.tolist() == d.get().tolist()
    with pytest.raises(TypeError):
        d.get(out=be.pinned_empty((3, 4), np.float64))
    with pytest.raises(ValueError):
        d.get(out=be.pinned_empty((4, 3), np.float32))
    with pytest.raises(RuntimeError):
        d.get(out=np.zeros((3, 8), np.float32)[:, ::2])
    with pytest.raises(TypeError):
        d.set(np.zeros((3, 4)))  # float64 into float32
    with pytest.raises(ValueError):
        d.set(np.zeros(12, np.float32))
    with pytest.raises(TypeError):
        cupy.cuda.alloc_pinned_memory(1.5)
