"""Per-run QC reports (issue 7): built from written outputs, self-contained, with warnings.

The output folders are written here with :class:`gpuperf.io.outputs.OutputWriter`, as the
pipelines write theirs, from phantoms whose truth (CBF level, failed voxels, AIF peak, TE) is
known, so every warning and number in the report can be checked against it.
"""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import nibabel as nib
import numpy as np
import pytest

from gpuperf.errors import InputError, OutputExistsError
from gpuperf.io.nifti import LoadedImage
from gpuperf.io.outputs import OutputWriter
from gpuperf.report import (
    checks,
    figures,
    find_runs,
    load_extra,
    load_run,
    report_path,
    save_extra,
    write_run_report,
)
from gpuperf.report.display import display_range, normalize_units
from gpuperf.report.run import build_run_html, map_stats
from gpuperf.status import Status
from gpuperf.status import is_flagged as status_is_flagged
from gpuperf.status import sidecar_entry as status_sidecar


def _reference(shape, zooms, affine=None) -> LoadedImage:
    affine = np.diag([*zooms, 1.0]) if affine is None else affine
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_zooms(zooms)
    return LoadedImage(Path("reference.nii.gz"), np.zeros(shape, np.float32), affine, hdr)


def ellipsoid(shape, fill=0.8) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = sum(((g - (n - 1) / 2) / (fill * n / 2)) ** 2 for g, n in zip(grids, shape, strict=True))
    return r2 < 1


def write_outputs(
    out_dir: Path,
    prefix: str = "sub-01",
    modality: str = "dsc",
    *,
    shape=(24, 24, 8),
    zooms=(2.0, 2.0, 4.0),
    affine=None,
    cbf_level: float = 50.0,
    cbf_units: str = "ml/100g/min",
    failed_fraction: float = 0.0,
    aif_peak_s: float = 15.0,
    te_s: float = 0.03,
    mask_fill: float = 0.8,
    input_mask: bool = False,
    extra: bool = True,
    seed: int = 0,
    failed_code: int | None = None,
    failed_nan: bool = True,
) -> dict:
    """Write a run's outputs like the pipelines do; returns the truth used."""
    rng = np.random.default_rng(seed)
    mask = ellipsoid(shape, mask_fill)
    n = int(mask.sum())
    failed = np.zeros(shape, bool)
    idx = np.flatnonzero(mask)
    failed.flat[rng.choice(idx, int(round(failed_fraction * n)), replace=False)] = True
    status = np.zeros(shape, np.float32)
    status[failed] = 1
    ref = _reference(shape, zooms, affine)
    sources = []
    if input_mask:
        mpath = out_dir.parent / f"{prefix}_input_brainmask.nii.gz"
        mpath.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), ref.affine), str(mpath))
        sources.append(str(mpath))

    def in_mask(values):
        out = np.where(mask, values, np.nan).astype(np.float32)
        if failed_nan:
            out[failed] = np.nan
        return out

    params = {"te_s": te_s, "method": "osvd"} if modality == "dsc" else {"pld_s": [0.5, 1, 2]}
    prov = {
        "SoftwareVersion": "test",
        "Backend": "numpy",
        "Device": "CPU (NumPy)",
        "Parameters": params,
        "Sources": sources,
    }
    cbf = cbf_level * (1 + 0.15 * rng.standard_normal(shape))
    t = np.arange(50) * 1.5
    with OutputWriter(out_dir, prefix, reference=ref, provenance=prov) as w:
        w.add_map("cbf", in_mask(cbf), cbf_units, "Cerebral blood flow")
        if modality == "dsc":
            w.add_map("cbv", in_mask(4 + 0.5 * rng.standard_normal(shape)), "ml/100g", "CBV")
            w.add_map("mtt", in_mask(5 + 0.5 * rng.standard_normal(shape)), "s", "MTT")
            w.add_map("tmax", in_mask(2 + 0.5 * rng.standard_normal(shape)), "s", "Tmax")
            w.add_map("ttp", in_mask(22 + rng.standard_normal(shape)), "s", "Time to peak")
            w.add_map("k2", in_mask(1e-3 * rng.standard_normal(shape)), "1/s", "Leakage K2")
            w.add_map("osvd_threshold", in_mask(rng.uniform(0, 0.3, shape)), "1", "oSVD thr")
            w.add_map("status", status, "1", "status bits", extra=status_sidecar())
            aif_mask = np.zeros(shape, np.uint8)
            aif_mask[shape[0] // 2, shape[1] // 2 - 2 : shape[1] // 2 + 2, shape[2] // 2] = 1
            w.add_map("aif_mask", aif_mask, "1", "AIF voxels", dtype=np.uint8)
            shifted = np.clip(t - (aif_peak_s - 4.5), 0, None)
            w.add_tsv("aif", {"time": t, "curve": shifted**3 * np.exp(-shifted / 1.5)})
        else:
            w.add_map("att", in_mask(1.2 + 0.2 * rng.standard_normal(shape)), "s", "ATT")
            w.add_map("cbf_stderr", in_mask(rng.uniform(1, 5, shape)), "ml/100g/min", "SE CBF")
            w.add_map("att_stderr", in_mask(rng.uniform(0, 0.2, shape)), "s", "SE ATT")
            code = int(Status.FIT_FAILED) if failed_code is None else failed_code
            w.add_map("status", status * code, "1", "fit status", extra=status_sidecar())
        w.commit(elapsed_s=1.5)
    if extra:
        k = 3
        if modality == "dsc":
            ex = {
                "curves": {
                    "time_s": t,
                    "concentration": rng.random((k, t.size)),
                    "fitted": rng.random((k, t.size)),
                    "residue": rng.random((k, t.size)),
                    "voxels": np.array([[10, 10, 4], [12, 12, 4], [8, 14, 3]]),
                },
                "baseline_s": (0.0, 9.0),
                "timings": {"deconvolution": 0.8},
            }
        else:
            pld = np.array([0.5, 1.0, 1.5, 2.0, 2.5])
            ex = {
                "curves": {
                    "time_s": pld,
                    "delta_m": rng.random((k, pld.size)),
                    "fitted": rng.random((k, 40)),
                    "fit_time_s": np.linspace(0.2, 3.0, 40),
                    "labels": ["a", "b", "c"],
                },
                "timings": {"fit": 0.4},
            }
        save_extra(out_dir / f"{prefix}_qc.npz", ex)
    return {"mask": mask, "failed": failed, "cbf": cbf, "zooms": zooms}


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []
        self.href: list[str] = []
        self.ids: set[str] = set()
        self.n_img = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.n_img += 1
        if "src" in a:
            self.src.append(a["src"])
        if "href" in a:
            self.href.append(a["href"])
        if "id" in a:
            self.ids.add(a["id"])


def references(path: Path) -> _Refs:
    p = _Refs()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def assert_self_contained(path: Path) -> _Refs:
    """Every image is a data URI, every link an anchor of the page or an existing local file."""
    text = path.read_text(encoding="utf-8")
    refs = references(path)
    for src in refs.src:  # PNG images or SVG plots, each a complete document
        kind, _, payload = src.partition(";base64,")
        assert kind in ("data:image/png", "data:image/svg+xml"), src[:40]
        raw = base64.b64decode(payload)
        if kind == "data:image/png":
            assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw.endswith(b"IEND\xaeB`\x82"), src[:40]
        else:
            root = ElementTree.fromstring(raw)
            assert root.tag == "{http://www.w3.org/2000/svg}svg" and float(root.get("width")) > 0
    for h in refs.href:
        if h.startswith("#"):
            assert h[1:] in refs.ids, f"anchor {h} has no target"
        else:
            assert "://" not in h and not h.startswith("/"), h
            from urllib.parse import unquote

            assert (path.parent / unquote(h)).exists(), f"broken link {h}"
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert 'class="gp-error"' not in text, "a section failed to draw"
    return refs


@pytest.fixture(scope="module")
def dsc_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dsc") / "out"
    write_outputs(out, "sub-01", "dsc", input_mask=True)
    return out


@pytest.fixture(scope="module")
def asl_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("asl") / "out"
    write_outputs(out, "sub-02", "asl", affine=np.diag([-3.0, 3.0, 5.0, 1.0]), zooms=(3, 3, 5))
    return out


# -- reading the outputs ----------------------------------------------------------------------


def test_load_run_finds_maps_masks_aif(dsc_run):
    run = load_run(dsc_run, "sub-01")
    assert {"cbf", "cbv", "mtt", "tmax", "ttp", "k2", "osvd_threshold", "status"} <= set(run.maps)
    assert "aif_mask" not in run.maps and run.aif_mask is not None and run.aif_mask.sum() == 4
    truth = ellipsoid((24, 24, 8))
    assert "Sources" in run.mask_source and np.array_equal(run.mask, truth)
    assert run.aif_curve is not None and run.aif_curve.size == 50
    assert run.maps["cbf"].units == "ml/100g/min"
    assert run.provenance()["Backend"] == "numpy"
    assert find_runs(dsc_run) == [("sub-01", "dsc")]


def test_mask_derived_without_mask_file(asl_run):
    run = load_run(asl_run, "sub-02")
    assert "no mask file" in run.mask_source
    assert np.array_equal(run.mask, ellipsoid((24, 24, 8)))
    assert find_runs(asl_run) == [("sub-02", "asl")]


def test_no_outputs_is_input_error(tmp_path):
    with pytest.raises(InputError, match="no map"):
        load_run(tmp_path, "nobody")


def test_extra_roundtrip(tmp_path):
    ex = {
        "curves": {"time_s": [0, 1, 2], "delta_m": [[1, 2, 3]], "labels": ["v1"], "units": "a.u."},
        "baseline_s": (0, 5),
        "timings": {"fit": 1.25},
        "warnings": ["check this"],
    }
    back = load_extra(save_extra(tmp_path / "x_qc.npz", ex))
    assert np.array_equal(back["curves"]["measured"], [[1, 2, 3]])
    assert back["curves"]["labels"] == ["v1"] and back["curves"]["units"] == "a.u."
    assert back["timings"] == {"fit": 1.25} and back["warnings"] == ["check this"]
    assert np.array_equal(back["baseline_s"], [0, 5])


# -- display ranges and figures ---------------------------------------------------------------


def test_display_ranges_fixed_only_in_expected_units():
    v = np.random.default_rng(1).normal(300, 10, 1000)
    assert display_range("cbf", "mL/100 g/min", v)[:3] == (0.0, 100.0, True)
    lo, hi, fixed, _ = display_range("cbf", "a.u.", v)  # relative CBF: range from the data
    assert not fixed and lo < np.percentile(v, 3) and hi > np.percentile(v, 97)
    assert display_range("mtt", "s", v)[:3] == (0.0, 12.0, True)
    assert display_range("tmax", "s", v)[:2] == (0.0, 10.0)
    assert display_range("cbv", "ml/100g", v)[:2] == (0.0, 8.0)
    assert display_range("att", "s", v)[:2] == (0.0, 3.0)
    k2 = np.random.default_rng(2).normal(0.002, 0.01, 1000)
    lo, hi, fixed, spec = display_range("k2", "1/s", k2)
    assert lo == -hi and hi == pytest.approx(np.percentile(np.abs(k2), 98)) and spec.symmetric
    assert normalize_units(" mL/100G/Min ") == "ml/100g/min"


def test_to_ras_flips_left_right():
    data = np.zeros((4, 3, 2))
    data[0, 1, 1] = 1  # first voxel along x; with a negative x axis it is the rightmost... in L
    ras, zooms = figures.to_ras(data, np.diag([-2.0, 3.0, 4.0, 1.0]), (2.0, 3.0, 4.0))
    assert ras[3, 1, 1] == 1 and zooms == (2.0, 3.0, 4.0)
    swapped = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    ras, zooms = figures.to_ras(data, swapped @ np.diag([2.0, 3.0, 4.0, 1.0]), (2.0, 3.0, 4.0))
    assert ras.shape == (3, 4, 2) and ras[1, 0, 1] == 1 and zooms == (3.0, 2.0, 4.0)


def test_montage_of_one_slice_is_the_fullest_at_the_asked_size():
    """The cohort page's thumbnail: one slice, the one with most mask voxels, about
    ``panel_px`` wide (not the first slice that holds mask voxels)."""
    import matplotlib.image as mpimg

    shape = (20, 20, 5)
    mask = np.zeros(shape, bool)
    mask[8:12, 8:12, 0] = True  # a small first slice
    mask[2:18, 2:18, 3] = True  # the fullest
    data = np.where(mask, np.arange(5)[None, None, :] * 20.0, np.nan)
    png, info = figures.montage(
        data, mask, np.eye(4), (1, 1, 1), "cbf", "ml/100g/min", max_slices=1, panel_px=96
    )
    assert info["slices"] == [3] and (info["ncols"], info["nrows"]) == (1, 1)
    img = mpimg.imread(__import__("io").BytesIO(png))
    assert img.shape[1] == 100  # 20 voxels x round(96 / 20) = 5
    assert figures.pick_slices(mask, 2) == [0, 3]


def test_montage_marks_nan_and_reports_clipping():
    import matplotlib.image as mpimg

    shape = (16, 16, 3)
    mask = ellipsoid(shape)
    data = np.where(mask, 50.0, np.nan)
    data[mask & (np.arange(16)[:, None, None] > 11)] = 150.0  # beyond the fixed range
    data[mask & (np.arange(16)[None, :, None] < 4)] = np.nan  # failed voxels
    png, info = figures.montage(data, mask, np.eye(4), (1, 1, 1), "cbf", "ml/100g/min")
    inside = data[mask]
    fin = inside[np.isfinite(inside)]
    assert info["fixed"] and (info["vmin"], info["vmax"]) == (0.0, 100.0)
    assert info["above"] == pytest.approx((fin > 100).mean()) and info["above"] > 0
    assert info["nan"] == int(np.isnan(inside).sum()) > 0
    img = mpimg.imread(__import__("io").BytesIO(png))
    magenta = (img[..., 0] > 0.95) & (img[..., 1] < 0.05) & (img[..., 2] > 0.95)
    assert magenta.sum() > 20, "NaN voxels inside the mask must show in magenta"
    _, info2 = figures.montage(
        np.where(mask, 50.0, np.nan), mask, np.eye(4), (1, 1, 1), "cbf", "ml/100g/min"
    )
    assert info2["nan"] == 0 and info2["above"] == 0


def test_pick_slices_spans_the_mask():
    m = np.zeros((4, 4, 40), bool)
    m[:, :, 5:35] = True
    s = figures.pick_slices(m, 12)
    assert len(s) == 12 and s[0] == 5 and s[-1] == 34 and s == sorted(set(s))


# -- checks -----------------------------------------------------------------------------------


def _codes(tmp_path, **kw) -> set[str]:
    out = tmp_path / "o"
    write_outputs(out, "r", kw.pop("modality", "dsc"), extra=False, **kw)
    run = load_run(out, "r")
    from gpuperf.report.collect import detect_modality

    return {
        f.code
        for f in checks.run_checks(run, detect_modality(out, "r"), {})
        if f.level == "warning"
    }


def test_clean_run_has_no_warnings(tmp_path):
    assert _codes(tmp_path) == set()


def test_many_failed_voxels_warns(tmp_path):
    assert {"many-flagged", "many-nan"} <= _codes(tmp_path, failed_fraction=0.2)
    assert _codes(tmp_path / "b", failed_fraction=0.04) == set()  # below both limits


def test_converged_codes_are_not_flagged(tmp_path):
    kw = {"modality": "asl", "failed_fraction": 0.5, "failed_nan": False}
    assert _codes(tmp_path / "a", failed_code=int(Status.AT_KINK), **kw) == set()
    assert _codes(tmp_path / "b", failed_code=int(Status.FIT_FAILED), **kw) == {"many-flagged"}


def test_late_aif_warns(tmp_path):
    codes = _codes(tmp_path, aif_peak_s=50.0)  # 50 s of 73.5 s, after the 22 s tissue TTP
    assert {"aif-late", "aif-after-tissue"} <= codes


def test_te_in_ms_warns(tmp_path):
    assert "te-wrong" in _codes(tmp_path, te_s=30.0)
    assert checks.check_te({"te_s": 0.003})[0].code == "te-wrong"  # plausible units, odd value
    assert checks.check_te({"nested": {"EchoTime": 0.025}}) == []


def test_small_mask_warns(tmp_path):
    # 1 mm voxels, 128^2 x 40 FOV = 655 ml; a mask of a few ml is 'little brain'
    assert "small-mask" in _codes(
        tmp_path, shape=(64, 64, 20), zooms=(2.0, 2.0, 2.0), mask_fill=0.15
    )


def test_implausible_cbf_warns(tmp_path):
    assert "cbf-implausible" in _codes(tmp_path, cbf_level=900.0)
    assert "cbf-implausible" not in _codes(tmp_path / "b", cbf_level=900.0, cbf_units="a.u.")


def test_flagged_count_uses_the_status_flags():
    """AT_KINK is a note (a usable fit); every other flag counts as flagged."""
    values = [0, 0, int(Status.AT_KINK), int(Status.MAX_ITER | Status.AT_KINK), 1, 128]
    assert status_is_flagged(values).tolist() == [False, False, False, True, True, True]


def test_map_stats_against_numpy():
    v = np.random.default_rng(3).normal(size=101)
    v[::10] = np.nan
    s = map_stats(v)
    fin = v[np.isfinite(v)]
    assert s["median"] == pytest.approx(np.median(fin)) and s["nan"] == 11 and s["n"] == 90
    assert s["q1"] == pytest.approx(np.percentile(fin, 25))


# -- whole reports ----------------------------------------------------------------------------


def test_dsc_report_self_contained(dsc_run):
    path = write_run_report(dsc_run, "sub-01", "dsc")
    assert path == report_path(dsc_run, "sub-01") and path.exists()
    refs = assert_self_contained(path)
    text = path.read_text(encoding="utf-8")
    # 8 montages + AIF curve + AIF voxels + voxel curves
    assert refs.n_img == 8 + 3
    for needle in (
        "no warnings",
        "Arterial input function",
        "residue",
        "oSVD thr",
        "Leakage K2",
        "CPU (NumPy)",
        "te_s",
        "deconvolution",
        "Range 0 to 100",
    ):
        assert needle in text, needle
    assert not list(dsc_run.glob(".gpuperf-tmp-*")) and not list(dsc_run.glob("*.tmp"))


def test_asl_report_sections(asl_run):
    path = write_run_report(asl_run, "sub-02", "asl")
    refs = assert_self_contained(path)
    text = path.read_text(encoding="utf-8")
    # 5 montages + CBF and ATT histograms + ΔM curves
    assert refs.n_img == 5 + 2 + 1
    assert "ΔM against PLD" in text and "Histograms" in text
    assert "Fit status" in text and "gpuperf.status" in text
    assert re.search(r">modality<[^\n]*>ASL<", text) and "ctx." not in text  # plain labels


def test_report_overwrite_policy(asl_run):
    path = report_path(asl_run, "sub-02")
    if not path.exists():
        path.write_text("old")
    with pytest.raises(OutputExistsError):
        write_run_report(asl_run, "sub-02", "asl")
    before = path.read_text(encoding="utf-8")
    assert before  # untouched by the refused write


def test_warnings_at_top_of_page(tmp_path):
    out = tmp_path / "o"
    write_outputs(out, "r", "dsc", failed_fraction=0.3, te_s=25.0, extra=False)
    run = load_run(out, "r")
    text, errors = build_run_html(run, "dsc", {"warnings": ["pipeline said so"]}, max_slices=2)
    assert errors == []
    top = text.index('id="warnings"')
    assert top < text.index('id="run"') and top < text.index('id="maps"')
    for needle in ("many-flagged", "te-wrong", "looks like milliseconds", "pipeline said so"):
        assert text.index(needle) < text.index('id="run"'), needle


def test_bad_modality_is_input_error(asl_run):
    with pytest.raises(InputError, match="modality"):
        write_run_report(asl_run, "sub-02", "pet")


def test_runs_with_nested_prefixes_are_kept_apart(tmp_path):
    write_outputs(tmp_path, "sub-01", "asl", extra=False, shape=(8, 8, 2))
    write_outputs(tmp_path, "sub-01_dsc", "dsc", extra=False, shape=(10, 10, 2))
    assert find_runs(tmp_path) == [("sub-01", "asl"), ("sub-01_dsc", "dsc")]
    assert set(load_run(tmp_path, "sub-01").maps) == {
        "cbf",
        "att",
        "cbf_stderr",
        "att_stderr",
        "status",
    }


# -- raster and SVG helpers ---------------------------------------------------------------------


def test_png_bytes_round_trip():
    import io

    import matplotlib.image as mpimg

    from gpuperf.report.raster import png_bytes

    rng = np.random.default_rng(0)
    for c in (3, 4):
        a = rng.integers(0, 256, (7, 11, c), dtype=np.uint8)
        back = mpimg.imread(io.BytesIO(png_bytes(a)))
        np.testing.assert_array_equal(np.round(back * 255).astype(np.uint8), a)
    with pytest.raises(ValueError):
        png_bytes(np.zeros((4, 4), np.uint8))


def test_outline_and_scaling():
    from gpuperf.report.raster import outline, scale_factors, upscale

    m = np.zeros((9, 9), bool)
    m[2:7, 2:7] = True
    edge = outline(m)
    assert edge.sum() == 16 and not edge[3:6, 3:6].any() and edge[m].sum() == edge.sum()
    assert outline(np.ones((4, 4), bool)).sum() == 0  # touching the border is not an edge
    sx, sy = scale_factors(68, 68, 1.0)
    assert sx == sy == 2
    sx, sy = scale_factors(16, 16, 2.0)
    assert sy == 2 * sx
    assert upscale(np.arange(4).reshape(2, 2), 3, 2).shape == (4, 6)


def test_montage_orientation_and_outline():
    """RAS+ shown in neurological convention: +x (subject right) on the right of the panel,
    +y (anterior) at the top; the mask outline is cyan."""
    import io

    import matplotlib.image as mpimg

    shape = (16, 16, 1)
    mask = np.zeros(shape, bool)
    mask[2:14, 2:14] = True
    data = np.where(mask, 10.0, np.nan)
    data[12, 12, 0] = 95.0  # right, anterior
    png, info = figures.montage(data, mask, np.eye(4), (1, 1, 1), "cbf", "ml/100g/min")
    img = np.round(mpimg.imread(io.BytesIO(png))[..., :3] * 255).astype(int)
    bright = np.argwhere(img.sum(axis=2) == img.sum(axis=2).max())
    h, w = img.shape[:2]
    assert bright[:, 1].mean() > 0.6 * w and bright[:, 0].mean() < 0.4 * h
    cyan = (img[..., 0] == 0) & (img[..., 1] == 229) & (img[..., 2] == 255)
    assert cyan.sum() > 0 and info["ncols"] == 1 and info["colours"][0].startswith("#")


def test_svg_ticks_and_document():
    from xml.etree import ElementTree as ET

    from gpuperf import svg

    assert svg.nice_ticks(0.0, 100.0) == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    assert svg.nice_ticks(0.013, 0.049) == [0.02, 0.03, 0.04]
    doc = figures.histogram(np.r_[np.linspace(0, 90, 100), 250.0], "cbf", "ml/100g/min")
    root = ET.fromstring(doc)
    texts = "".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "1 above the range" in texts and "median" in texts
    assert len(list(root.iter("{http://www.w3.org/2000/svg}rect"))) >= 50  # bars


def test_stored_colour_tables_are_matplotlibs():
    """The stored tables (bench/update_color_tables.py) are matplotlib's colour maps sampled as
    the report did, for every colour map of the map table; others are still sampled."""
    from gpuperf import maps
    from gpuperf.report import raster
    from gpuperf.report.colortables import LUTS

    assert {s.cmap for s in maps.MAPS.values()} <= set(LUTS)
    for name in LUTS:
        np.testing.assert_array_equal(raster.lut(name), raster.sample_colormap(name), name)
    np.testing.assert_array_equal(raster.tab20(), raster.sample_colormap("tab20", 20))
    assert raster.lut("plasma").shape == (256, 3)  # not stored: sampled from matplotlib


def test_run_report_imports_no_matplotlib(tmp_path):
    """A run report (montages, curves) needs no plotting library: a fresh interpreter that
    publishes one has not imported matplotlib."""
    import subprocess
    import sys

    from gpuperf.asl.simulate import write_phantom

    ph = write_phantom(tmp_path / "in", "pcasl", shape=(8, 8, 3), repeats=1, seed=1)
    code = (
        "import sys\nfrom gpuperf.asl.pipeline import run_asl\n"
        "from gpuperf.report import publish_result\n"
        f"r = run_asl({str(ph['asl'])!r}, {str(tmp_path / 'o')!r}, device='cpu', "
        "extra_outputs=('report.html',))\n"
        "paths = list(publish_result(r))\n"
        "assert paths and paths[0].exists(), paths\n"
        "print('matplotlib' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "False"
