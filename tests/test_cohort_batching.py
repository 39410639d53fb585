"""Batching small subjects into one backend call: same outputs, isolation, grouping."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from test_cohort_support import _copy_nifti_gz, fake_pipeline, make_bids, published_files

from gpuperf.asl.model import ASLFit, ASLModel
from gpuperf.asl.pipeline import compute_asl_batch, prepare_asl, run_asl, split_fit, write_asl
from gpuperf.cohort import run_participants
from gpuperf.cohort.batching import auto_batch_voxels, is_batchable
from gpuperf.io.nifti import load_image, read_sidecar
from gpuperf.io.outputs import OutputWriter


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _assert_fits_identical(got: ASLFit, want: ASLFit) -> None:
    for name in ("cbf", "att", "cbf_stderr", "att_stderr", "residual", "status", "n_iter"):
        a, b = getattr(got, name), getattr(want, name)
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        # bit for bit (NaN where NaN): the fit is voxelwise, concatenation changes nothing
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=name)


# -- the ASL stages ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asl_phantoms(tmp_path_factory):
    """Three multi-PLD pCASL phantoms (different noise, grids and masks) and one PASL."""
    from gpuperf.asl.simulate import write_phantom

    tmp = tmp_path_factory.mktemp("aslb")
    out = {}
    for i, (kind, shape) in enumerate(
        (("pcasl", (7, 6, 2)), ("pcasl", (6, 6, 2)), ("pasl", (6, 6, 2)), ("pcasl", (8, 5, 2)))
    ):
        out[f"{i + 1:02d}"] = write_phantom(
            tmp / f"p{i}", kind, shape=shape, repeats=1, noise_sd=2.0, seed=i, subject=f"{i:02d}"
        )
    return tmp, out


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_batched_asl_fit_is_bit_identical_to_fits_alone(
    asl_phantoms, tmp_path, monkeypatch, device
):
    tmp, ph = asl_phantoms

    def prep(sub, folder, **kw):
        return prepare_asl(ph[sub]["asl"], tmp_path / folder / sub, device=device, **kw)

    # sub-02 calibrated with one M0 of blood (scalar M0), the others voxelwise
    ref = {"m0_ref_mask": ph["02"]["mask"], "m0_ref_tissue": "gm"}
    alone = {s: prep(s, "alone", **(ref if s == "02" else {})) for s in ph}
    for p in alone.values():
        compute_asl_batch([p])
    calls = []
    real_fit = ASLModel.fit
    monkeypatch.setattr(
        ASLModel,
        "fit",
        lambda self, d, m0, **kw: calls.append(d.shape[0]) or real_fit(self, d, m0, **kw),
    )
    batch = {s: prep(s, "batch", **(ref if s == "02" else {})) for s in ph}
    assert np.ndim(batch["02"].m0) == 0 and np.ndim(batch["01"].m0) == 1
    assert len({p.batch_key for p in batch.values()}) == 2  # pCASL x3, PASL
    compute_asl_batch(list(batch.values()))
    # one call for the three pCASL subjects, one for the PASL one
    pcasl_voxels = sum(batch[s].n_voxels for s in ("01", "02", "04"))
    assert sorted(calls) == sorted([pcasl_voxels, batch["03"].n_voxels])
    for s in ph:
        assert batch[s].fit.cbf.shape == (batch[s].n_voxels,)
        _assert_fits_identical(batch[s].fit, alone[s].fit)
        assert batch[s].batch_size == (1 if s == "03" else 3)
    # and the written maps equal run_asl's
    res = write_asl(batch["04"])
    direct = run_asl(ph["04"]["asl"], tmp_path / "direct", device=device)
    for name in ("cbf", "att", "status"):
        np.testing.assert_array_equal(
            np.asarray(nib.load(res.outputs[name]).dataobj),
            np.asarray(nib.load(direct.outputs[name]).dataobj),
        )
    assert res.summary["fit_batch_subjects"] == 3


def test_split_fit_checks_sizes():
    fit = ASLFit(cbf=np.arange(5.0), status=np.zeros(5, np.int8), method="gkm", constants={})
    a, b = split_fit(fit, [2, 3])
    np.testing.assert_array_equal(b.cbf, [2.0, 3.0, 4.0])
    assert a.att is None and b.status.shape == (3,)
    with pytest.raises(ValueError, match="sum"):
        split_fit(fit, [2, 2])


def test_fit_key_separates_incompatible_models():
    base = ASLModel("PCASL", [1.0, 2.0], 1.8, device="cpu")
    assert base.fit_key() == ASLModel("PCASL", [1.0, 2.0], 1.8, device="cpu").fit_key()
    for other in (
        ASLModel("PCASL", [2.0, 1.0], 1.8, device="cpu"),  # sample order = column order
        ASLModel("PCASL", [1.0, 2.0], 1.5, device="cpu"),
        ASLModel("PCASL", [1.0, 2.0], 1.8, t1_blood_s=1.5, device="cpu"),
        ASLModel("PCASL", [1.0, 2.0], 1.8, alpha=0.7, device="cpu"),
        ASLModel("PCASL", [1.0, 2.0], 1.8, cbf_bounds=(0, 100), device="cpu"),
        ASLModel("PCASL", [1.0, 2.0], 1.8, dtype=np.float64, device="cpu"),
        ASLModel("CASL", [1.0, 2.0], 1.8, alpha=0.85, device="cpu"),
    ):
        assert other.fit_key() != base.fit_key()


# -- the cohort runner with the real ASL pipeline ----------------------------------------------
def _asl_bids(tmp: Path, ph: dict) -> Path:
    root = tmp / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "b", "BIDSVersion": "1.9"}))
    for sub, q in ph.items():
        perf = root / f"sub-{sub}" / "perf"
        for key, name in (("asl", "asl.nii.gz"), ("m0", "m0scan.nii.gz")):
            if q.get(key) is not None:  # PASL: M0 volumes included in the series
                _copy_nifti_gz(q[key], perf / f"sub-{sub}_{name}")
        for key, name in (("asl_json", "asl.json"), ("aslcontext", "aslcontext.tsv")):
            (perf / f"sub-{sub}_{name}").write_bytes(q[key].read_bytes())
        if q.get("m0_json"):
            (perf / f"sub-{sub}_m0scan.json").write_bytes(q["m0_json"].read_bytes())
    return root


def test_cohort_batched_outputs_equal_unbatched(asl_phantoms, tmp_path):
    _, ph = asl_phantoms
    root = _asl_bids(tmp_path, ph)
    kw = {"device": "cpu", "modality": ["asl"]}
    one = run_participants(root, tmp_path / "one", batch_voxels=0, **kw)
    many = run_participants(root, tmp_path / "many", batch_voxels=10**6, **kw)
    assert one.exit_code == 0 and many.exit_code == 0, [r.error for r in many.failed]
    files_one = [p.relative_to(tmp_path / "one") for p in published_files(tmp_path / "one")]
    files_many = [p.relative_to(tmp_path / "many") for p in published_files(tmp_path / "many")]
    assert files_one == files_many and any(f.name.endswith("_att.nii.gz") for f in files_one)
    for rel in files_one:
        if rel.name.endswith(".nii.gz"):
            a = np.asarray(nib.load(tmp_path / "one" / rel).dataobj)
            b = np.asarray(nib.load(tmp_path / "many" / rel).dataobj)
            np.testing.assert_array_equal(a, b, err_msg=str(rel))
    # consecutive compatible subjects only: 01+02 together, 03 (PASL) alone, 04 alone
    logs = {s: (tmp_path / "many" / "logs" / f"sub-{s}_asl.log").read_text() for s in ph}
    assert "computed in a batch of 2 series" in logs["01"]
    assert "computed in a batch of 2 series" in logs["02"]
    assert "batch of" not in logs["03"] and "batch of" not in logs["04"]
    assert "batch of" not in (tmp_path / "one" / "logs" / "sub-01_asl.log").read_text()
    cfg = json.loads((tmp_path / "many" / "logs" / "config.json").read_text())
    assert cfg["run"]["batch_voxels"] == 10**6
    # the same fingerprints: a batched re-run of the unbatched output skips everything
    again = run_participants(root, tmp_path / "one", batch_voxels=10**6, **kw)
    assert again.count("skipped") == len(ph)


def test_cohort_single_pld_batched_equals_unbatched(tmp_path):
    """Consensus-formula (single-PLD) subjects, one with a brain mask, batched or not."""
    from test_cohort_support import make_real_bids

    ds = make_real_bids(tmp_path, subjects=("01", "02", "03"), modalities=("asl",))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[asl]\nreport = false\n[inputs]\nmasks_dir = "{ds["masks"]}"\n')
    kw = {"device": "cpu", "config": cfg}
    one = run_participants(ds["bids"], tmp_path / "one", batch_voxels=1, **kw)
    many = run_participants(ds["bids"], tmp_path / "many", batch_voxels=10**6, **kw)
    assert one.exit_code == 0 and many.exit_code == 0, [r.error for r in many.failed]
    files = [p.relative_to(tmp_path / "one") for p in published_files(tmp_path / "one")]
    assert files == [p.relative_to(tmp_path / "many") for p in published_files(tmp_path / "many")]
    for rel in files:
        if rel.name.endswith(".nii.gz"):
            np.testing.assert_array_equal(
                np.asarray(nib.load(tmp_path / "one" / rel).dataobj),
                np.asarray(nib.load(tmp_path / "many" / rel).dataobj),
                err_msg=str(rel),
            )
    log = (tmp_path / "many" / "logs" / "sub-03_asl.log").read_text()
    assert "computed in a batch of 3 series" in log
    assert many.results[0].summary["fit_batch_subjects"] == 3


# -- grouping and failure isolation with a fake batchable pipeline ------------------------------
COMPUTE_CALLS: list[list[str]] = []


def _fake_prepare(
    series_path,
    out_dir,
    *,
    prefix=None,
    overwrite=False,
    reporter=None,
    device="auto",
    mask_path=None,
    aif="auto",
    fail_prepare: str | None = None,
    fail_compute: str | None = None,
    odd_key: str | None = None,
):
    name = Path(series_path).name
    sub = name.split("_")[0]
    if fail_prepare and sub == f"sub-{fail_prepare}":
        raise RuntimeError("injected prepare failure")
    img = load_image(series_path, ndim=(4,), role="series")
    te = read_sidecar(series_path)["EchoTime"]
    return SimpleNamespace(
        sub=sub,
        img=img,
        te=te,
        batch_key="odd" if odd_key and sub == f"sub-{odd_key}" else "even",
        n_voxels=int(np.prod(img.shape3d)),
        bad=bool(fail_compute and sub == f"sub-{fail_compute}"),
        out_dir=out_dir,
        prefix=prefix,
        overwrite=overwrite,
        cbf=None,
    )


def _fake_compute(prepared):
    COMPUTE_CALLS.append([p.sub for p in prepared])
    if any(p.bad for p in prepared):
        raise RuntimeError("injected compute failure")
    flat = np.concatenate([p.img.data.reshape(-1, p.img.n_frames) for p in prepared])
    means = flat.mean(axis=1)  # one vectorised call over every subject's voxels
    start = 0
    for p in prepared:
        p.cbf = (means[start : start + p.n_voxels] * p.te).reshape(p.img.shape3d)
        start += p.n_voxels


def _fake_write(p):
    with OutputWriter(p.out_dir, p.prefix or "x", reference=p.img, overwrite=p.overwrite) as w:
        w.add_map("cbf", p.cbf, units="ml/100g/min", description="fake CBF")
        outputs = w.commit()
    return SimpleNamespace(outputs=outputs, summary={"median_cbf": float(np.median(p.cbf))})


def fake_batched(series_path, out_dir, **kw):
    p = _fake_prepare(series_path, out_dir, **kw)
    _fake_compute([p])
    return _fake_write(p)


fake_batched.prepare = _fake_prepare
fake_batched.compute = _fake_compute
fake_batched.write = _fake_write


def _run(root, out, batch_voxels, **asl):
    from gpuperf.cohort.config import CohortConfig

    COMPUTE_CALLS.clear()
    cfg = CohortConfig(asl=asl)
    pipes = {"asl": fake_batched, "dsc": fake_pipeline}
    return run_participants(root, out, pipelines=pipes, config=cfg, batch_voxels=batch_voxels)


def test_unbatchable_jobs_between_do_not_break_a_batch(tmp_path):
    # job order alternates sub-01_asl, sub-01_dsc, sub-02_asl, ...: DSC (no stages) runs at
    # once, the ASL series still share one call
    root = make_bids(tmp_path / "bids", subjects=("01", "02", "03"), modalities=("asl", "dsc"))
    run = _run(root, tmp_path / "out", 10**6)
    assert run.exit_code == 0 and run.count("done") == 6
    assert COMPUTE_CALLS == [["sub-01", "sub-02", "sub-03"]]
    assert [r.job_id for r in run.results][:2] == ["sub-01_asl", "sub-01_dsc"]  # job order


def test_grouping_consecutive_compatible_within_budget(tmp_path):
    root = make_bids(
        tmp_path / "bids", subjects=("01", "02", "03", "04", "05"), modalities=("asl",)
    )
    n = 5 * 4 * 3  # voxels per subject
    run = _run(root, tmp_path / "a", 2 * n, odd_key="03")
    assert run.exit_code == 0
    assert COMPUTE_CALLS == [["sub-01", "sub-02"], ["sub-03"], ["sub-04", "sub-05"]]
    ref = _run(root, tmp_path / "b", 0, odd_key="03")
    assert len(COMPUTE_CALLS) == 5  # unbatched: the pipeline itself, one call each
    for rel in [p.relative_to(tmp_path / "b") for p in published_files(tmp_path / "b")]:
        if rel.name.endswith(".nii.gz"):
            np.testing.assert_array_equal(
                nib.load(tmp_path / "a" / rel).get_fdata(),
                nib.load(tmp_path / "b" / rel).get_fdata(),
            )
    _run(root, tmp_path / "c", 2 * n - 1)  # budget below two subjects: one at a time
    assert COMPUTE_CALLS == [[f"sub-0{i}"] for i in range(1, 6)]
    _run(root, tmp_path / "d", 10 * n)
    assert COMPUTE_CALLS == [[f"sub-0{i}" for i in range(1, 6)]]
    assert ref.count("done") == 5


def test_failure_inside_a_batch_fails_only_the_culprit(tmp_path):
    root = make_bids(
        tmp_path / "bids", subjects=("01", "02", "03", "04", "05"), modalities=("asl",)
    )
    out = tmp_path / "out"
    run = _run(root, out, 10**6, fail_compute="02", fail_prepare="04")
    assert run.exit_code == 1
    status = {r.subject: r.status for r in run.results}
    assert status == {"01": "done", "02": "failed", "03": "done", "04": "failed", "05": "done"}
    # 04 failed in prepare (never computed); the batch 01,02,03,05 failed, then each alone
    assert COMPUTE_CALLS == [
        ["sub-01", "sub-02", "sub-03", "sub-05"],
        ["sub-01"],
        ["sub-02"],
        ["sub-03"],
        ["sub-05"],
    ]
    fails = _tsv(out / "logs" / "failures.tsv")
    assert {(f["subject"], f["error"]) for f in fails} == {
        ("02", "RuntimeError: injected compute failure"),
        ("04", "RuntimeError: injected prepare failure"),
    }
    assert "computing this one alone" in (out / "logs" / "sub-01_asl.log").read_text()
    assert not list(out.rglob(".gpuperf-tmp-*"))
    assert not (out / "sub-02").exists() or not list((out / "sub-02").rglob("*.nii.gz"))
    # resumable: the done ones are skipped, the failed ones run (and fail) again
    again = _run(root, out, 10**6, fail_compute="02", fail_prepare="04")
    assert {r.subject: r.status for r in again.results} == {
        **status,
        "01": "skipped",
        "03": "skipped",
        "05": "skipped",
    }
    assert COMPUTE_CALLS == [["sub-02"]]


def test_batching_is_automatic_only_on_a_gpu():
    opts = {"asl": {"device": "cpu"}, "dsc": {}}
    pipes = {"asl": "gpuperf.asl.pipeline:run_asl", "dsc": "gpuperf.dsc.pipeline:run_dsc"}
    assert is_batchable(pipes["asl"]) and is_batchable(pipes["dsc"])
    assert not is_batchable("no.such.module:f")
    assert auto_batch_voxels(opts, pipes) == 0  # NumPy: off


@pytest.mark.gpu
def test_batching_is_automatic_on_a_gpu(asl_phantoms, tmp_path):
    _, ph = asl_phantoms
    pipes = {"asl": "gpuperf.asl.pipeline:run_asl", "dsc": "gpuperf.dsc.pipeline:run_dsc"}
    assert auto_batch_voxels({"asl": {"device": "gpu"}, "dsc": {}}, pipes) > 10_000
    root = _asl_bids(tmp_path, ph)
    auto = run_participants(root, tmp_path / "auto", device="gpu", modality=["asl"])
    one = run_participants(root, tmp_path / "one", device="gpu", modality=["asl"], batch_voxels=0)
    assert auto.exit_code == 0 and one.exit_code == 0
    assert "batch of 2" in (tmp_path / "auto" / "logs" / "sub-01_asl.log").read_text()
    for p in published_files(tmp_path / "one"):
        if p.name.endswith(".nii.gz"):
            rel = p.relative_to(tmp_path / "one")
            np.testing.assert_array_equal(
                np.asarray(nib.load(p).dataobj),
                np.asarray(nib.load(tmp_path / "auto" / rel).dataobj),
            )


def test_cli_batch_voxels_option(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import gpuperf.cohort
    from gpuperf.cli import app

    seen = {}

    def fake_run(*args, options, **kwargs):  # the flags arrive as one CohortOptions
        seen.update(kwargs, **options.to_parameters())
        return SimpleNamespace(exit_code=0, failed=[], results=[])

    monkeypatch.setattr(gpuperf.cohort, "run_participants", fake_run)
    bids = make_bids(tmp_path / "bids", subjects=("01",))
    res = CliRunner().invoke(
        app, ["run", str(bids), str(tmp_path / "o"), "participant", "--batch-voxels", "5000"]
    )
    assert res.exit_code == 0, res.output
    assert seen["batch_voxels"] == 5000
