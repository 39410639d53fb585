"""Whole-cohort throughput: a synthetic BIDS cohort of 50 DSC subjects through ``gpuperf run``.

Stage ``cohort.run`` (method ``osvd``): :func:`gpuperf.cohort.run_participants` from gzipped
NIfTI files to published maps, in three modes: ``serial`` (one process, no read-ahead),
``prefetch2`` (one process, two subjects decompressed ahead in threads) and ``processes2`` (two
worker processes; their stage/compute sums add over both). The
``extra_info`` of each row holds what shows the overlap:

- ``subjects_per_min``;
- ``sum_stage_s``: total time spent staging inputs (gzip decompression + merged sidecars);
- ``sum_compute_s``: total time inside the DSC pipeline (NIfTI read of the staged file, fit,
  map writing incl. gzip compression of the outputs);
- ``wall_s``; ``overlap`` = ``(sum_stage_s + sum_compute_s) / wall_s``: close to 1 without
  read-ahead, above 1 when decompressing the next subjects overlaps computing the current one
  (the best possible is ``(stage + compute) / max(stage, compute)``).

Sizes: ``laptop`` 48 x 48 x 8 voxels x 60 frames per subject (4.4 MB uncompressed), ``brain``
64 x 64 x 24 x 60 (23.6 MB). Every subject is the same phantom file copied: the I/O cost is
the same as for distinct subjects.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from gpuperf.benchmarks.conventions import record
from gpuperf.cohort import run_participants
from gpuperf.cohort.config import CohortConfig

N_SUBJECTS = 50
SHAPES = {"laptop": (48, 48, 8), "brain": (64, 64, 24)}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, bench_size):
    from gpuperf.dsc.simulate import write_phantom

    tmp = tmp_path_factory.mktemp("cohort")
    shape = SHAPES[bench_size]
    ph = write_phantom(tmp / "phantom", shape=shape, n_frames=60, noise_sd=0.02, prefix="p")
    gz = ph["series"].read_bytes()  # gzipped, as the phantom writer stores it
    meta = json.loads(ph["sidecar"].read_text())
    root = tmp / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.9.0"}')
    (root / "dsc.json").write_text(json.dumps(meta))  # inherited by every subject
    for i in range(1, N_SUBJECTS + 1):
        perf = root / f"sub-{i:03d}" / "perf"
        perf.mkdir(parents=True)
        (perf / f"sub-{i:03d}_dsc.nii.gz").write_bytes(gz)
    n_vox = shape[0] * shape[1] * shape[2]
    return root, n_vox, len(gz), tmp


MODES = {"serial": (1, 0), "prefetch2": (1, 2), "processes2": (2, 0)}


def _fresh_outputs(tmp_path):
    """pytest-benchmark ``setup``: a new, empty output folder for every round."""
    outs = iter(range(100))

    def setup():
        out = tmp_path / f"out{next(outs)}"
        shutil.rmtree(out, ignore_errors=True)
        return (out,), {}

    return setup


@pytest.mark.parametrize("mode", list(MODES))
def test_cohort_run(benchmark, backend, cohort, mode, tmp_path):
    root, n_vox, gz_bytes, tmp = cohort
    device = "gpu" if backend.name == "cupy" else "cpu"
    workers, prefetch = MODES[mode]
    runs = []
    setup = _fresh_outputs(tmp_path)

    def run(out):
        r = run_participants(
            root,
            out,
            modality=["dsc"],
            config=CohortConfig(dsc={"report": False}),  # throughput of the fits, not of QC
            device=device,
            prefetch=prefetch,
            workers=workers,
            work_dir=tmp / "work",
        )
        assert r.exit_code == 0, [x.error for x in r.failed]
        runs.append(r)

    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1, warmup_rounds=0)
    last = runs[-1]
    stage = sum(r.stage_s for r in last.results)
    compute = sum(r.compute_s for r in last.results)
    publish = sum(r.publish_s for r in last.results)
    record(
        benchmark,
        stage="cohort.run",
        method="osvd",
        voxels=N_SUBJECTS * n_vox,
        backend=backend,
        frames=60,
        note=f"{N_SUBJECTS} subjects, {mode}: workers={workers}, prefetch={prefetch}",
        subjects=N_SUBJECTS,
        subjects_per_min=round(60 * N_SUBJECTS / last.wall_s, 2),
        wall_s=round(last.wall_s, 3),
        sum_stage_s=round(stage, 3),
        sum_compute_s=round(compute, 3),
        sum_publish_s=round(publish, 3),
        overlap=round((stage + compute + publish) / last.wall_s, 3),
        gz_mb_per_subject=round(gz_bytes / 1e6, 2),
    )


def emulated_gpu_pipeline(
    series_path, out_dir, *, prefix=None, overwrite=False, reporter=None, device="auto"
):
    """Reads the staged series, waits ``EMULATED_COMPUTE_S`` as a host thread waits for a GPU
    kernel (GIL released), writes one map: the shape of a GPU run, without a GPU."""
    import time
    from types import SimpleNamespace

    from gpuperf.io.nifti import load_image
    from gpuperf.io.outputs import OutputWriter

    img = load_image(series_path, ndim=(4,))
    time.sleep(EMULATED_COMPUTE_S)
    with OutputWriter(out_dir, prefix, reference=img, overwrite=overwrite) as w:
        w.add_map("cbf", img.data[..., 0], units="a.u.", description="frame 0")
        outputs = w.commit()
    return SimpleNamespace(outputs=outputs, summary={})


EMULATED_COMPUTE_S = 0.03


@pytest.mark.parametrize("prefetch", [0, 2], ids=["serial", "prefetch2"])
def test_cohort_overlap_emulated_gpu(benchmark, cohort, prefetch, tmp_path):
    """The overlap itself, where compute is short as on a GPU (``EMULATED_COMPUTE_S``): with
    read-ahead the wall time approaches max(total staging, total compute), not their sum."""
    root, n_vox, gz_bytes, tmp = cohort
    runs = []
    setup = _fresh_outputs(tmp_path)

    def run(out):
        r = run_participants(
            root,
            out,
            modality=["dsc"],
            prefetch=prefetch,
            work_dir=tmp / "work",
            pipelines={"dsc": emulated_gpu_pipeline},
        )
        assert r.exit_code == 0, [x.error for x in r.failed]
        runs.append(r)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1, warmup_rounds=0)
    last = runs[-1]
    stage = sum(r.stage_s for r in last.results)
    compute = sum(r.compute_s + r.publish_s for r in last.results)
    record(
        benchmark,
        stage="cohort.run",
        method="emulated_gpu",
        voxels=N_SUBJECTS * n_vox,
        backend="numpy",
        frames=60,
        note=f"{N_SUBJECTS} subjects, compute emulated by a {EMULATED_COMPUTE_S} s wait, "
        f"prefetch={prefetch}",
        subjects=N_SUBJECTS,
        subjects_per_min=round(60 * N_SUBJECTS / last.wall_s, 2),
        wall_s=round(last.wall_s, 3),
        sum_stage_s=round(stage, 3),
        sum_compute_s=round(compute, 3),
        overlap=round((stage + compute) / last.wall_s, 3),
        best_overlap=round((stage + compute) / max(stage, compute), 3),
    )


#: ASL batching benchmark: many small multi-PLD pCASL subjects (the case batching is for).
ASL_SUBJECTS = 16
ASL_SHAPES = {"laptop": (16, 16, 4), "brain": (32, 32, 8)}


@pytest.fixture(scope="module")
def asl_cohort(tmp_path_factory, bench_size):
    from gpuperf.asl.simulate import write_phantom

    tmp = tmp_path_factory.mktemp("aslcohort")
    ph = write_phantom(
        tmp / "phantom", "pcasl", shape=ASL_SHAPES[bench_size], repeats=1, noise_sd=2.0
    )
    root = tmp / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.9.0"}')
    for i in range(1, ASL_SUBJECTS + 1):
        perf = root / f"sub-{i:03d}" / "perf"
        perf.mkdir(parents=True)
        for key, name in (
            ("asl", "asl.nii.gz"),
            ("m0", "m0scan.nii.gz"),
            ("asl_json", "asl.json"),
            ("aslcontext", "aslcontext.tsv"),
        ):
            shutil.copyfile(ph[key], perf / f"sub-{i:03d}_{name}")
        if ph.get("m0_json"):
            shutil.copyfile(ph["m0_json"], perf / f"sub-{i:03d}_m0scan.json")
    return root, tmp


def _batching_run(benchmark, backend, root, tmp, tmp_path, modality, method, batch, note):
    """Time a cohort run with batching off (one call per subject) or on (several subjects per
    call, :mod:`gpuperf.cohort.batching`); outputs are identical, only the wall time differs."""
    device = "gpu" if backend.name == "cupy" else "cpu"
    runs = []
    setup = _fresh_outputs(tmp_path)

    def run(out):
        r = run_participants(
            root,
            out,
            modality=[modality],
            config=CohortConfig(**{modality: {"report": False}}),
            device=device,
            batch_voxels=0 if batch == "off" else 10**7,
            work_dir=tmp / "work",
        )
        assert r.exit_code == 0, [x.error for x in r.failed]
        runs.append(r)

    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1, warmup_rounds=0)
    last = runs[-1]
    n = len(last.results)
    record(
        benchmark,
        stage="cohort.run",
        method=f"{method}_batch_{batch}",
        voxels=sum(r.summary.get("voxels", 0) for r in last.results),
        backend=backend,
        note=f"{note}, batching {batch}",
        subjects=n,
        subjects_per_min=round(60 * n / last.wall_s, 2),
        wall_s=round(last.wall_s, 3),
        sum_compute_s=round(sum(r.compute_s for r in last.results), 3),
    )


@pytest.mark.parametrize("batch", ["off", "on"])
def test_cohort_asl_batching(benchmark, backend, asl_cohort, batch, tmp_path):
    """Small ASL subjects. On NumPy batching gains little (one vectorised call per subject
    already); on a GPU it saves the fixed launch/transfer costs of each subject's fit."""
    root, tmp = asl_cohort
    note = f"{ASL_SUBJECTS} small pCASL subjects"
    _batching_run(benchmark, backend, root, tmp, tmp_path, "asl", "asl_gkm", batch, note)


#: DSC batching benchmark: many small DSC subjects, each with its own automatic AIF.
DSC_SUBJECTS = 16
DSC_SHAPES = {"laptop": (16, 16, 4), "brain": (32, 32, 8)}


@pytest.fixture(scope="module")
def dsc_small_cohort(tmp_path_factory, bench_size):
    from gpuperf.dsc.simulate import write_phantom

    tmp = tmp_path_factory.mktemp("dsccohort")
    # four distinct phantoms (noise seeds: four different AIFs), cycled over the subjects
    series, meta = [], None
    for k in range(4):
        ph = write_phantom(
            tmp / f"phantom{k}", shape=DSC_SHAPES[bench_size], n_frames=60, noise_sd=0.02,
            seed=k, prefix=f"p{k}",
        )  # fmt: skip
        series.append(ph["series"].read_bytes())  # gzipped, as the phantom writer stores it
        meta = json.loads(ph["sidecar"].read_text())
    root = tmp / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.9.0"}')
    (root / "dsc.json").write_text(json.dumps(meta))
    for i in range(1, DSC_SUBJECTS + 1):
        perf = root / f"sub-{i:03d}" / "perf"
        perf.mkdir(parents=True)
        (perf / f"sub-{i:03d}_dsc.nii.gz").write_bytes(series[i % 4])
    return root, tmp


@pytest.mark.parametrize("batch", ["off", "on"])
def test_cohort_dsc_batching(benchmark, backend, dsc_small_cohort, batch, tmp_path):
    """Small DSC subjects (oSVD): ``on`` is one ``osvd_select`` launch for all their voxels, a
    plan per AIF. On NumPy the selection stays per subject, so it only saves Python overhead."""
    root, tmp = dsc_small_cohort
    note = f"{DSC_SUBJECTS} small DSC subjects"
    _batching_run(benchmark, backend, root, tmp, tmp_path, "dsc", "dsc_osvd", batch, note)


# -- as users run it: reports on (the default), 100 subjects of each modality -----------------
#: Subjects of the default-run cohort benchmark (issue 12: subjects per hour for 100 subjects).
DEFAULT_SUBJECTS = 100


def _copy_cohort(src_root, dst_root, n):
    """``n`` subjects, each a copy of ``src_root``'s first subject (same I/O as distinct ones)."""
    first = sorted(p for p in src_root.iterdir() if p.name.startswith("sub-"))[0]
    dst_root.mkdir()
    for p in src_root.iterdir():
        if p.is_file():
            shutil.copyfile(p, dst_root / p.name)
    for i in range(1, n + 1):
        sub = f"sub-{i:03d}"
        perf = dst_root / sub / "perf"
        perf.mkdir(parents=True)
        for f in (first / "perf").iterdir():
            shutil.copyfile(f, perf / f.name.replace(first.name, sub))
    return dst_root


def _grid(root) -> tuple[int, ...]:
    """The voxel grid of a cohort's first series."""
    import nibabel as nib

    first = sorted(root.glob("sub-*/perf/*_dsc.nii*")) + sorted(root.glob("sub-*/perf/*_asl.nii*"))
    return tuple(int(n) for n in nib.load(first[0]).shape[:3])


def _read_only(root) -> float:
    """Seconds to only read a cohort's inputs: every NIfTI file of every subject inflated and
    converted as the pipelines read it (:func:`gpuperf.io.nifti.load_image`) with its JSON
    sidecar, one after the other, nothing computed or written."""
    import time

    from gpuperf.io.nifti import load_image, read_sidecar

    t0 = time.perf_counter()
    for f in sorted(root.glob("sub-*/perf/*.nii*")):
        load_image(f)
        read_sidecar(f)
    return time.perf_counter() - t0


#: Whole-brain-sized subjects of the default-run benchmark: 100 (issue 12), about 0.5 s (DSC)
#: and 1 s (ASL) each on two cores.
BRAIN_SHAPE, BRAIN_SUBJECTS = (64, 64, 24), 100


@pytest.fixture(scope="module")
def brain_roots(tmp_path_factory):
    """One-subject BIDS roots of a DSC (60 frames) and a multi-PLD pCASL subject of
    :data:`BRAIN_SHAPE` voxels, for :func:`_copy_cohort`."""
    from gpuperf.asl.simulate import write_phantom as asl_phantom
    from gpuperf.dsc.simulate import write_phantom as dsc_phantom

    tmp = tmp_path_factory.mktemp("brain")
    roots = {}
    for modality in ("dsc", "asl"):
        root = tmp / modality
        perf = root / "sub-001" / "perf"
        perf.mkdir(parents=True)
        (root / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.9.0"}')
        if modality == "dsc":
            ph = dsc_phantom(tmp / "pd", shape=BRAIN_SHAPE, n_frames=60, noise_sd=0.02, prefix="p")
            files = {"series": "dsc.nii.gz", "sidecar": "dsc.json"}
        else:
            ph = asl_phantom(tmp / "pa", "pcasl", shape=BRAIN_SHAPE, repeats=1, noise_sd=2.0)
            files = {"asl": "asl.nii.gz", "m0": "m0scan.nii.gz", "asl_json": "asl.json",
                     "aslcontext": "aslcontext.tsv", "m0_json": "m0scan.json"}  # fmt: skip
        for key, name in files.items():
            if ph.get(key):
                shutil.copyfile(ph[key], perf / f"sub-001_{name}")
        roots[modality] = root
    return roots


@pytest.mark.parametrize("size", ["small", "brain"])
@pytest.mark.parametrize("modality", ["dsc", "asl"])
def test_cohort_default_run(
    benchmark, backend, cohort, asl_cohort, brain_roots, modality, size, tmp_path
):
    """``gpuperf run ... participant`` as users run it: reports on (maps written and reports
    drawn by a worker process while the next subject computes, :mod:`gpuperf.cohort.reporting`),
    two subjects read ahead. ``small``: 100 subjects of the cohort fixtures (DSC 48 x 48 x 8 or
    64 x 64 x 24 with ``--bench-size brain``; ASL 16 x 16 x 4 or 32 x 32 x 8); ``brain``:
    :data:`BRAIN_SUBJECTS` subjects of :data:`BRAIN_SHAPE` voxels (DSC 60 frames, ASL 7 PLDs).
    ``wall_s`` is the whole call (the cohort page and logs/*.tsv included).
    ``extra_info``: subjects per hour; the sums over subjects of staging (decompression
    into the work folder + merged sidecars, in the read-ahead threads), pipeline time, of which
    the fit, report and publish seconds (logs/jobs.tsv); ``read_s``: the time to only read the
    same inputs (:func:`_read_only`, one pass before the run); ``not_kernel_over_read`` = (wall
    - sum of kernel seconds) / ``read_s`` (issue-12 target <= 1.5; kernel: the model's
    per-voxel stages, ``kernel_s`` of logs/jobs.tsv: for DSC the conversion to dR2*, the bolus
    arrival and the AIF selection with the fit, for ASL the fit); ``not_fit_over_read`` the
    same with the fit alone as the kernel (what this row reported before);
    ``not_kernel_over_stage`` the same over the staging sum (staging runs beside the compute,
    in the read-ahead threads); ``prepared_aside``: subjects the report worker prepared while
    the one before computed (ASL; DSC's ``prepare`` runs model stages, kept with the compute,
    so its ``kernel_s`` all ran in the computing process)."""
    if size == "brain":
        src, n_subjects = brain_roots[modality], BRAIN_SUBJECTS
    else:
        src = cohort[0] if modality == "dsc" else asl_cohort[0]
        n_subjects = DEFAULT_SUBJECTS
    root = _copy_cohort(src, tmp_path / "bids", n_subjects)
    read_s = _read_only(root)
    device = "gpu" if backend.name == "cupy" else "cpu"
    runs = []
    setup = _fresh_outputs(tmp_path)
    walls = []

    def run(out):
        t0 = time.perf_counter()
        r = run_participants(
            root, out, modality=[modality], device=device, prefetch=2, work_dir=tmp_path / "w"
        )
        walls.append(time.perf_counter() - t0)  # the whole call: the cohort page and logs too
        assert r.exit_code == 0, [x.error for x in r.failed]
        runs.append(r)

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1, warmup_rounds=0)
    last, wall = runs[-1], walls[-1]
    sums = {k: sum(getattr(r, k) for r in last.results) for k in
            ("stage_s", "compute_s", "prepare_s", "write_s", "fit_s", "kernel_s", "report_s",
             "publish_s")}  # fmt: skip
    record(
        benchmark,
        stage="cohort.default",
        method="osvd" if modality == "dsc" else "buxton_pcasl",
        voxels=n_subjects,
        backend=backend,
        variant=f"{modality}, {size}",
        note=f"{n_subjects} {modality.upper()} subjects of "
        f"{'x'.join(map(str, _grid(root)))} voxels, reports on (worker process), prefetch 2; "
        "voxels = subjects",
        subjects=n_subjects,
        subjects_per_hour=round(3600 * n_subjects / wall, 1),
        wall_s=round(wall, 3),
        **{f"sum_{k}": round(v, 3) for k, v in sums.items()},
        prepared_aside=sum(r.prepared_aside for r in last.results),
        read_s=round(read_s, 3),
        not_kernel_over_read=round((wall - sums["kernel_s"]) / max(read_s, 1e-9), 2),
        not_fit_over_read=round((wall - sums["fit_s"]) / max(read_s, 1e-9), 2),
        not_kernel_over_stage=round((wall - sums["kernel_s"]) / max(sums["stage_s"], 1e-9), 2),
        loadavg_1m=round(__import__("os").getloadavg()[0], 2),
    )
