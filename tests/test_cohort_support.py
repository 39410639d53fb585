"""Helpers of the cohort tests: a tiny BIDS dataset and a fake pipeline with the real contract.

The fake pipeline follows the contract of ``run_dsc``/``run_asl`` (path in, maps written through
``OutputWriter``, result with ``.outputs`` and ``.summary``) and reads the sidecar beside its
input, so it sees exactly what the real pipelines would: it lets the runner's failure isolation,
resumability and kill safety be tested in a fraction of a second per subject. Subprocess tests
import it by module name (this folder is put on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np

from gpuperf.errors import InputError
from gpuperf.io.nifti import load_image, read_sidecar, sidecar_path
from gpuperf.io.outputs import OutputWriter

SHAPE = (5, 4, 3)
N_FRAMES = 12
TE_S = 0.03


def write_series(path: Path, seed: int, n_frames: int = N_FRAMES) -> np.ndarray:
    """A small random 4D series (gzip-compressed when the name ends in .gz)."""
    rng = np.random.default_rng(seed)
    data = (100 + 10 * rng.standard_normal(SHAPE + (n_frames,))).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])).to_filename(str(path))
    return data


def make_bids(
    root: Path,
    subjects: tuple[str, ...] = ("01", "02", "03"),
    sessions: tuple[str, ...] = (),
    modalities: tuple[str, ...] = ("dsc",),
) -> Path:
    """A BIDS dataset whose DSC ``EchoTime`` is inherited from the root ``dsc.json``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "cohort test", "BIDSVersion": "1.9.0"}), encoding="utf-8"
    )
    (root / "dsc.json").write_text(json.dumps({"EchoTime": TE_S, "RepetitionTime": 1.5}))
    (root / "asl.json").write_text(json.dumps({"EchoTime": 0.012, "RepetitionTime": 4.0}))
    seed = 0
    for sub in subjects:
        for ses in sessions or (None,):
            folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "perf"
            head = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            for mod in modalities:
                seed += 1
                write_series(folder / f"{head}_{mod}.nii.gz", seed)
    return root


def fake_pipeline(
    series_path,
    out_dir,
    *,
    mask_path=None,
    aif="auto",
    scale: float = 1.0,
    fail_subject: str | None = None,
    crash_subject: str | None = None,
    device: str = "auto",
    prefix=None,
    overwrite: bool = False,
    reporter=None,
):
    """Writes ``cbf`` = scale * mean over time * EchoTime and ``cbv`` = frame 0."""
    meta = read_sidecar(series_path, required=True)
    if "EchoTime" not in meta:
        raise InputError(sidecar_path(series_path), "EchoTime", "required field is missing")
    if fail_subject and f"sub-{fail_subject}_" in Path(series_path).name:
        raise RuntimeError("injected failure")
    if crash_subject and f"sub-{crash_subject}_" in Path(series_path).name:
        os._exit(-11)  # as a segfault in a driver would: no exception, no cleanup
    img = load_image(series_path, ndim=(4,), role="series")
    cbf = img.data.mean(axis=3) * scale * meta["EchoTime"]
    if mask_path is not None:
        mask = load_image(mask_path, ndim=(3,), role="mask").data > 0
        cbf = np.where(mask, cbf, np.nan)
    if reporter is not None:
        reporter.log(f"fake pipeline on {series_path} (TE {meta['EchoTime']} s)")
    with OutputWriter(
        out_dir,
        prefix or "x",
        reference=img,
        overwrite=overwrite,
        provenance={"Sources": [str(series_path)]},
    ) as w:
        w.add_map("cbf", cbf, units="ml/100g/min", description="fake CBF")
        w.add_map("cbv", img.data[..., 0], units="ml/100g", description="fake CBV")
        # kill tests: pause with the maps staged but not published (an environment variable,
        # not a parameter, so that the resumed run has the same fingerprint)
        sleep_s = float(os.environ.get("GPUPERF_TEST_SLEEP_S", "0"))
        if sleep_s:
            Path(os.environ["GPUPERF_TEST_COMPUTING"]).write_text(str(series_path))
            time.sleep(sleep_s)
        outputs = w.commit()
    summary = {
        "median_cbf": float(np.nanmedian(cbf)),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }
    return SimpleNamespace(outputs=outputs, summary=summary)


def published_files(out_dir: Path) -> list[Path]:
    """Files under final names in the subject folders (not hidden temp folders/markers)."""
    return sorted(
        p
        for p in out_dir.glob("sub-*/**/*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out_dir).parts)
    )


def test_fake_pipeline_contract(tmp_path):
    root = make_bids(tmp_path / "bids", subjects=("01",))
    series = root / "sub-01" / "perf" / "sub-01_dsc.nii.gz"
    # no EchoTime beside the file: the inherited one is only seen through the cohort runner
    try:
        fake_pipeline(series, tmp_path / "out", prefix="p")
    except InputError as exc:
        assert "EchoTime" in str(exc) or exc.field == "file"
    else:  # pragma: no cover
        raise AssertionError("the fake pipeline must need EchoTime")


def _copy_nifti_gz(src: Path, dst: Path) -> None:
    """Copy an image to a ``.nii.gz`` name, compressing it if the source is not gzipped."""
    import gzip

    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    dst.write_bytes(data if data[:2] == b"\x1f\x8b" else gzip.compress(data, compresslevel=1))


def make_real_bids(
    tmp: Path,
    subjects: tuple[str, ...] = ("01", "02"),
    modalities: tuple[str, ...] = ("dsc", "asl"),
    masks_for: tuple[str, ...] = ("01",),
) -> dict[str, Path]:
    """A BIDS dataset of small phantoms for the real pipelines, plus a masks derivatives folder.

    DSC ``EchoTime`` lives only in the root ``dsc.json`` (inheritance); ``masks_for`` subjects
    get brain and AIF masks (the others use the pipelines' automatic ones); every subject gets
    ``lesion`` and ``NAWM`` masks for the group stage. Returns ``bids``, ``masks`` and per
    subject the untouched phantom folder ``phantom-<sub>-<modality>``.
    """
    from gpuperf.asl.simulate import write_phantom as asl_phantom
    from gpuperf.dsc.simulate import write_phantom as dsc_phantom

    root = tmp / "bids"
    masks = tmp / "masks"
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "real", "BIDSVersion": "1.9.0"})
    )
    out: dict[str, Path] = {"bids": root, "masks": masks}
    te = None

    def _region_masks(brain: Path, anat: Path, head: str) -> None:
        # group-stage regions: a 'lesion' (one brain row) and 'NAWM' (the rest of the brain)
        b = nib.load(brain).get_fdata() > 0
        lesion = np.zeros_like(b)
        lesion[3, :, :] = b[3, :, :]
        aff = nib.load(brain).affine
        anat.mkdir(parents=True, exist_ok=True)
        for desc, m in (("lesion", lesion), ("NAWM", b & ~lesion)):
            nib.Nifti1Image(m.astype(np.uint8), aff).to_filename(
                str(anat / f"{head}_desc-{desc}_mask.nii.gz")
            )

    for i, sub in enumerate(subjects):
        perf = root / f"sub-{sub}" / "perf"
        anat = masks / f"sub-{sub}" / "anat"
        if "dsc" in modalities:
            ph = tmp / f"phantom-{sub}-dsc"
            p = dsc_phantom(
                ph, shape=(8, 8, 2), n_frames=40, prefix=f"sub-{sub}", seed=i, noise_sd=0.01
            )
            _copy_nifti_gz(p["series"], perf / f"sub-{sub}_dsc.nii.gz")
            meta = json.loads(p["sidecar"].read_text())
            te = meta.pop("EchoTime")
            (perf / f"sub-{sub}_dsc.json").write_text(json.dumps(meta))
            if sub in masks_for:
                _copy_nifti_gz(p["brainmask"], anat / f"sub-{sub}_acq-dsc_desc-brain_mask.nii.gz")
                _copy_nifti_gz(p["arterymask"], anat / f"sub-{sub}_acq-dsc_desc-aif_mask.nii.gz")
            _region_masks(p["brainmask"], anat, f"sub-{sub}_acq-dsc")
            out[f"phantom-{sub}-dsc"] = ph
        if "asl" in modalities:
            ph = tmp / f"phantom-{sub}-asl"
            q = asl_phantom(ph, kind="single", subject=sub, shape=(8, 8, 2), seed=i)
            for key, name in (("asl", "asl.nii.gz"), ("m0", "m0scan.nii.gz")):
                _copy_nifti_gz(q[key], perf / f"sub-{sub}_{name}")
            for key, name in (
                ("asl_json", "asl.json"),
                ("aslcontext", "aslcontext.tsv"),
                ("m0_json", "m0scan.json"),
            ):
                (perf / f"sub-{sub}_{name}").write_bytes(q[key].read_bytes())
            if sub in masks_for:
                _copy_nifti_gz(q["mask"], anat / f"sub-{sub}_acq-asl_desc-brain_mask.nii.gz")
            _region_masks(q["mask"], anat, f"sub-{sub}_acq-asl")
            out[f"phantom-{sub}-asl"] = ph
    if te is not None:
        (root / "dsc.json").write_text(json.dumps({"EchoTime": te}))
    return out
