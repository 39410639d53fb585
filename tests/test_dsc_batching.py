"""Batching small DSC subjects (each with its own AIF) into one call: bit-identical maps,
grouping by settings, the cohort runner, failure isolation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from test_cohort_support import make_real_bids, published_files

from gpuperf.cohort import run_participants
from gpuperf.dsc import osvd
from gpuperf.dsc.methods import OSVDQueue
from gpuperf.dsc.model import DSCFit, DSCModel
from gpuperf.dsc.pipeline import compute_dsc_batch, prepare_dsc, run_dsc, write_dsc

MAPS = ("cbf", "cbv", "mtt", "tmax", "ttp", "threshold", "oi", "status", "k2", "aif")


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _assert_fits_identical(got: DSCFit, want: DSCFit) -> None:
    for name in MAPS:
        a, b = getattr(got, name), getattr(want, name)
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        # bit for bit (NaN where NaN)
        np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=name)
    np.testing.assert_array_equal(got.aif_voxels, want.aif_voxels)


@pytest.fixture(scope="module")
def dsc_phantoms(tmp_path_factory):
    """Three compatible phantoms (different grids, noise, so different automatic AIFs) and a
    fourth with fewer frames (incompatible)."""
    from gpuperf.dsc.simulate import write_phantom

    tmp = tmp_path_factory.mktemp("dscb")
    specs = [((8, 8, 2), 40), ((10, 8, 2), 40), ((9, 9, 2), 40), ((8, 8, 2), 30)]
    return [
        write_phantom(tmp / f"p{i}", shape=shape, n_frames=n, seed=i, noise_sd=0.01, prefix=f"p{i}")
        for i, (shape, n) in enumerate(specs)
    ]


@pytest.fixture
def host_kernel(monkeypatch):
    """Run the oSVD selection through the merged-launch path with the kernel source on the
    host (what a GPU does), counting launches: list of (voxels, plans)."""
    from gpuperf.cuda.host import find_cxx

    if find_cxx() is None:
        pytest.skip("no host C++ compiler (g++) to build the kernel source")
    launches = []
    real = osvd.select_host

    def counted(coef, plan, *a, plan_index=None, **kw):
        launches.append((coef.shape[0], 1 if isinstance(plan, osvd.OSVDPlan) else len(plan)))
        return real(coef, plan, *a, plan_index=plan_index, **kw)

    monkeypatch.setattr(OSVDQueue, "host_kernel", True)
    monkeypatch.setattr(osvd, "select_host", counted)
    return launches


@pytest.mark.parametrize(
    "mode,method",
    [
        ("cpu", "osvd"),
        ("host", "osvd"),
        ("cpu", "csvd"),
        pytest.param("gpu", "osvd", marks=pytest.mark.gpu),
        pytest.param("gpu", "tikhonov", marks=pytest.mark.gpu),
    ],
)
def test_batched_dsc_is_bit_identical_to_alone(
    dsc_phantoms, tmp_path, monkeypatch, request, mode, method
):
    launches = request.getfixturevalue("host_kernel") if mode == "host" else []
    device = "gpu" if mode == "gpu" else "cpu"
    leak = {"leakage": "bsw"} if method == "csvd" else {}

    def prep(i, folder):
        return prepare_dsc(
            dsc_phantoms[i]["series"],
            tmp_path / folder / str(i),
            method=method,
            device=device,
            **leak,
        )

    alone = [prep(i, "alone") for i in range(4)]
    for p in alone:
        compute_dsc_batch([p])
    assert len(launches) == (4 if mode == "host" else 0)
    # each subject its own AIF: the batch really mixes several deconvolution operators
    aifs = [p.fit.aif for p in alone[:3]]
    assert not np.array_equal(aifs[0], aifs[1]) and not np.array_equal(aifs[1], aifs[2])
    launches.clear()
    calls = []
    real_batch = DSCModel.fit_batch
    monkeypatch.setattr(
        DSCModel,
        "fit_batch",
        lambda self, ps, *a, **kw: calls.append(len(ps)) or real_batch(self, ps, *a, **kw),
    )
    batch = [prep(i, "batch") for i in range(4)]
    assert len({p.batch_key for p in batch}) == 2  # 40 frames x3, 30 frames
    compute_dsc_batch(batch)
    assert sorted(calls) == [1, 3]
    if mode == "host":  # one launch for the three subjects' voxels (three plans), one alone
        assert sorted(launches) == sorted(
            [(sum(p.n_voxels for p in batch[:3]), 3), (batch[3].n_voxels, 1)]
        )
    for i in range(4):
        _assert_fits_identical(batch[i].fit, alone[i].fit)
        assert batch[i].batch_size == (1 if i == 3 else 3)
    # and the written maps equal run_dsc's
    res = write_dsc(batch[1])
    assert res.summary["fit_batch_subjects"] == 3
    direct = run_dsc(
        dsc_phantoms[1]["series"],
        tmp_path / "direct",
        method=method,
        device=device,
        **leak,
    )
    by_name = {p.name: p for p in direct.outputs}
    for path in res.outputs:
        if path.name.endswith(".nii.gz"):
            np.testing.assert_array_equal(
                np.asarray(nib.load(path).dataobj),
                np.asarray(nib.load(by_name[path.name]).dataobj),
                err_msg=path.name,
            )


def test_write_before_compute_is_an_error(dsc_phantoms, tmp_path):
    from gpuperf.errors import GpuperfError

    p = prepare_dsc(dsc_phantoms[0]["series"], tmp_path, device="cpu")
    with pytest.raises(GpuperfError, match="before compute"):
        write_dsc(p)
    assert not list(tmp_path.iterdir())  # nothing staged or published


def test_fit_key_separates_incompatible_models():
    base = DSCModel(0.03, 1.5, device="cpu")
    assert base.fit_key() == DSCModel(0.03, 1.5, device="cpu").fit_key()
    # TE and the AIF options act before the per-voxel work (per subject): still compatible
    assert base.fit_key() == DSCModel(0.025, 1.5, device="cpu", aif_clusters=3).fit_key()
    others = [
        DSCModel(0.03, 1.6, device="cpu"),
        DSCModel(0.03, 1.5, "csvd", device="cpu"),
        DSCModel(0.03, 1.5, osvd_thresholds=(0.1, 0.2), device="cpu"),
        DSCModel(0.03, 1.5, oi_limit=0.05, device="cpu"),
        DSCModel(0.03, 1.5, leakage="bsw", device="cpu"),
        DSCModel(0.03, 1.5, kh=1.0, device="cpu"),
        DSCModel(0.03, 1.5, rho=1.0, device="cpu"),
        DSCModel(0.03, 1.5, dtype=np.float64, device="cpu"),
        DSCModel(0.03, 1.5, device="gpu"),
        DSCModel(0.03, 1.5, "tikhonov", mu=0.1, device="cpu"),
        DSCModel(0.03, 1.5, "ssvd", threshold=0.1, device="cpu"),
    ]
    keys = [m.fit_key() for m in others]
    assert base.fit_key() not in keys and len(set(keys)) == len(keys)


def test_fit_batch_refuses_mixed_frame_counts():
    from gpuperf.errors import GpuperfError

    m = DSCModel(0.03, 1.5, device="cpu")
    rng = np.random.default_rng(0)
    a = m.prepare(100 + rng.random((300, 30)), aif=np.linspace(0, 1, 30) ** 2)
    b = m.prepare(100 + rng.random((300, 40)), aif=np.linspace(0, 1, 40) ** 2)
    with pytest.raises(GpuperfError, match="frame counts"):
        m.fit_batch([a, b])
    assert m.fit_batch([]) == []


# -- the cohort runner with the real DSC pipeline ----------------------------------------------
@pytest.fixture(scope="module")
def dsc_cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dscc")
    ds = make_real_bids(tmp, subjects=("01", "02", "03"), modalities=("dsc", "asl"))
    cfg = tmp / "c.toml"
    cfg.write_text(
        f'[dsc]\nreport = false\n[asl]\nreport = false\n[inputs]\nmasks_dir = "{ds["masks"]}"\n'
    )
    return ds, cfg


def test_cohort_batched_dsc_equals_unbatched(dsc_cohort, tmp_path, host_kernel):
    ds, cfg = dsc_cohort
    kw = {"device": "cpu", "config": cfg}
    one = run_participants(ds["bids"], tmp_path / "one", batch_voxels=0, **kw)
    assert all(n == 1 for _, n in host_kernel)  # unbatched: one plan per launch
    host_kernel.clear()
    many = run_participants(ds["bids"], tmp_path / "many", batch_voxels=10**6, **kw)
    assert one.exit_code == 0 and many.exit_code == 0, [r.error for r in many.failed]
    # the three DSC subjects' oSVD selection is one launch with three plans
    assert [n for _, n in host_kernel] == [3]
    files = [p.relative_to(tmp_path / "one") for p in published_files(tmp_path / "one")]
    assert files == [p.relative_to(tmp_path / "many") for p in published_files(tmp_path / "many")]
    assert any(f.name.endswith("_dsc_cbf.nii.gz") or f.name.endswith("_cbf.nii.gz") for f in files)
    for rel in files:
        if rel.name.endswith((".nii.gz", ".tsv")):
            a, b = (tmp_path / d / rel for d in ("one", "many"))
            if rel.name.endswith(".tsv"):
                assert a.read_bytes() == b.read_bytes(), rel
                continue
            np.testing.assert_array_equal(
                np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj), err_msg=str(rel)
            )
    # job order alternates sub-01_dsc, sub-01_asl, ...: each modality is batched on its own
    for mod in ("dsc", "asl"):
        for s in ("01", "02", "03"):
            log = (tmp_path / "many" / "logs" / f"sub-{s}_{mod}.log").read_text()
            assert "computed in a batch of 3 series" in log, (mod, s)
    assert "batch of" not in (tmp_path / "one" / "logs" / "sub-01_dsc.log").read_text()


def test_cohort_dsc_failure_isolation(dsc_cohort, tmp_path, monkeypatch):
    ds, cfg = dsc_cohort
    real_prepare, real_compute = run_dsc.prepare, run_dsc.compute
    computed = []

    def prepare(series_path, *a, **kw):
        if "sub-03" in str(series_path):
            raise RuntimeError("injected prepare failure")
        return real_prepare(series_path, *a, **kw)

    def compute(prepared, *a, **kw):
        names = [p.series_path.name.split("_")[0] for p in prepared]
        computed.append(names)
        if "sub-02" in names:
            raise RuntimeError("injected compute failure")
        return real_compute(prepared, *a, **kw)

    monkeypatch.setattr(run_dsc, "prepare", prepare)
    monkeypatch.setattr(run_dsc, "compute", compute)
    run = run_participants(
        ds["bids"],
        tmp_path / "out",
        device="cpu",
        config=cfg,
        batch_voxels=10**6,
        modality=["dsc"],
    )
    assert run.exit_code == 1
    assert {r.subject: r.status for r in run.results} == {
        "01": "done",
        "02": "failed",
        "03": "failed",
    }
    # 03 never computed; the batch 01+02 failed, then each alone
    assert computed == [["sub-01", "sub-02"], ["sub-01"], ["sub-02"]]
    log = (tmp_path / "out" / "logs" / "sub-01_dsc.log").read_text()
    assert "computing this one alone" in log
    assert not list((tmp_path / "out").rglob(".gpuperf-tmp-*"))
    cfg_json = json.loads((tmp_path / "out" / "logs" / "config.json").read_text())
    assert cfg_json["run"]["batch_voxels"] == 10**6
