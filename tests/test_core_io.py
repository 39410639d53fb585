"""I/O: loading, grid checks, gather/scatter, atomic outputs with provenance."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from gpuperf.backend import NUMPY_BACKEND, chunk_slices, get_backend
from gpuperf.errors import GPUUnavailableError, InputError, OutputExistsError
from gpuperf.io import OutputWriter, gather, load_image, load_mask, read_sidecar, scatter
from gpuperf.provenance import provenance


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def series(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((4, 5, 3, 7)).astype(np.float32) + 1
    return _save(tmp_path / "s.nii.gz", data), data


def test_load_gather_scatter_roundtrip(series, tmp_path):
    path, data = series
    img = load_image(path, ndim=(4,))
    np.testing.assert_array_equal(img.data, data)
    mask = np.zeros(img.shape3d, bool)
    mask[1:3, 2:4, 1] = True
    block = gather(img.data, mask)
    assert block.shape == (mask.sum(), 7) and block.flags.c_contiguous
    np.testing.assert_array_equal(block, data[mask])
    back = scatter(block[:, 2], mask)
    assert np.isnan(back[~mask]).all()
    np.testing.assert_array_equal(back[mask], data[mask][:, 2])


@pytest.mark.parametrize("layout", ["F", "C", "strided"])
def test_gather_is_boolean_indexing_for_every_layout(layout):
    """gather's frame-wise path for Fortran-ordered series gives data[mask], voxels in C
    order, for F-ordered, C-ordered and non-contiguous series and empty and full masks; 37
    frames (19 strided) span several of its frame blocks (``GATHER_FRAMES``) and a partial one."""
    from gpuperf.io.nifti import GATHER_FRAMES

    rng = np.random.default_rng(1)
    base = rng.random((5, 4, 3, 37)).astype(np.float32)
    assert 37 % GATHER_FRAMES and 19 > GATHER_FRAMES
    data = {"F": np.asfortranarray(base), "C": base, "strided": base[:, :, :, ::2]}[layout]
    for mask in (rng.random(data.shape[:3]) > 0.5, np.zeros(data.shape[:3], bool),
                 np.ones(data.shape[:3], bool)):  # fmt: skip
        block = gather(data, mask)
        assert block.flags.c_contiguous and block.dtype == data.dtype
        np.testing.assert_array_equal(block, data[mask])
        assert block.shape == (mask.sum(), data.shape[3])


def test_scaling_is_applied_not_dropped(tmp_path):
    img = nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4))
    img.header.set_slope_inter(2.0, 1.0)
    nib.save(img, str(tmp_path / "x.nii"))
    loaded = load_image(tmp_path / "x.nii", ndim=(3,))
    np.testing.assert_allclose(loaded.data.ravel(), np.arange(8) * 2 + 1)


def test_errors_name_file_and_field(series, tmp_path):
    path, _ = series
    with pytest.raises(InputError, match="does not exist") as e:
        load_image(tmp_path / "missing.nii.gz")
    assert "missing.nii.gz" in str(e.value)
    with pytest.raises(InputError, match=r"dim: expected a 3D"):
        load_image(path, ndim=(3,))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="format"):
        load_image(bad)


def test_mask_on_other_grid_names_both_files(series, tmp_path):
    path, _ = series
    img = load_image(path)
    other_shape = _save(tmp_path / "m1.nii.gz", np.ones((4, 5, 2), np.uint8))
    with pytest.raises(InputError) as e:
        load_mask(other_shape, img)
    assert "m1.nii.gz" in str(e.value) and "s.nii.gz" in str(e.value) and "shape" in str(e.value)
    aff = np.eye(4)
    aff[0, 3] = 2.0
    other_affine = _save(tmp_path / "m2.nii.gz", np.ones((4, 5, 3), np.uint8), aff)
    with pytest.raises(InputError, match="affine") as e:
        load_mask(other_affine, img)
    assert "s.nii.gz" in str(e.value)
    empty = _save(tmp_path / "m3.nii.gz", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(InputError, match="empty"):
        load_mask(empty, img)


def test_sidecar_errors(tmp_path, series):
    path, _ = series
    assert read_sidecar(path) == {}
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        read_sidecar(path)


def test_output_writer_atomic_and_provenance(series, tmp_path):
    path, data = series
    img = load_image(path)
    out = tmp_path / "out"
    prov = provenance(NUMPY_BACKEND, {"method": "x"}, sources=[path])
    with OutputWriter(out, "sub-01", reference=img, provenance=prov, inputs=[path]) as w:
        w.expect(["cbf"])
        w.add_map("cbf", data[..., 0] * 10, units="ml/100g/min", description="CBF")
        w.add_tsv("aif", {"time_s": [0.0, 1.5], "curve": [0.0, np.nan]})
        assert not (out / "sub-01_cbf.nii.gz").exists()  # nothing final before commit
        paths = w.commit(elapsed_s=1.25)
    assert {p.name for p in paths} == {"sub-01_cbf.nii.gz", "sub-01_cbf.json", "sub-01_aif.tsv"}
    m = nib.load(str(out / "sub-01_cbf.nii.gz"))
    assert m.get_data_dtype() == np.float32
    np.testing.assert_allclose(m.affine, img.affine)
    np.testing.assert_allclose(np.asarray(m.dataobj), data[..., 0] * 10, rtol=1e-6)
    side = json.loads((out / "sub-01_cbf.json").read_text())
    for key in (
        "Units",
        "Description",
        "SoftwareVersion",
        "Backend",
        "Device",
        "ElapsedSeconds",
        "Parameters",
        "Sources",
    ):
        assert key in side
    assert side["ElapsedSeconds"] == 1.25 and side["Units"] == "ml/100g/min"
    assert (out / "sub-01_aif.tsv").read_text().splitlines()[2].endswith("n/a")
    assert not [p for p in out.iterdir() if p.name.startswith(".gpuperf-tmp")]

    # existing output: refused before anything is staged, untouched
    before = (out / "sub-01_cbf.nii.gz").read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        OutputWriter(out, "sub-01", reference=img).expect(["cbf"])
    with OutputWriter(out, "sub-01", reference=img, overwrite=True) as w:
        w.add_map("cbf", data[..., 1], units="a", description="b")
        w.commit()
    assert (out / "sub-01_cbf.nii.gz").read_bytes() != before


def test_failure_leaves_no_partial_output(series, tmp_path):
    path, data = series
    img = load_image(path)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with OutputWriter(out, "p", reference=img) as w:
            w.add_map("cbf", data[..., 0], units="a", description="b")
            raise RuntimeError("boom mid-run")
    assert list(out.iterdir()) == []


def test_never_writes_over_inputs(series, tmp_path):
    path, data = series
    img = load_image(path)
    with pytest.raises(Exception, match="input"):
        OutputWriter(tmp_path, "", reference=img, inputs=[path], overwrite=True).add_file(
            "s.nii.gz", lambda p: p.write_bytes(b""), ext=".nii.gz"
        )


def test_backend_selection(monkeypatch):
    assert get_backend("cpu").name == "numpy"
    monkeypatch.setenv("GPUPERF_DISABLE_GPU", "1")
    from gpuperf import backend

    backend.gpu_status.cache_clear()
    try:
        assert get_backend("auto").name == "numpy"
        with pytest.raises(GPUUnavailableError, match="no GPU is usable"):
            get_backend("gpu")
    finally:
        backend.gpu_status.cache_clear()
    with pytest.raises(Exception, match="device must be one of"):
        get_backend("tpu")


@pytest.mark.parametrize("n,bpv,budget", [(10, 4, 8), (10, 4, 1000), (7, 100, 1), (0, 1, 1)])
def test_chunk_slices_cover_in_order(n, bpv, budget):
    sl = chunk_slices(n, bpv, memory_budget=budget)
    covered = [i for s in sl for i in range(s.start, s.stop)]
    assert covered == list(range(n))
    assert all(s.stop - s.start >= 1 for s in sl)


def test_inputs_not_modified(series, tmp_path):
    path, _ = series
    before = (os.stat(path).st_mtime_ns, path.read_bytes())
    img = load_image(path)
    img.data[:] = 0  # the loaded copy is ours to change
    assert (os.stat(path).st_mtime_ns, path.read_bytes()) == before


def test_atomic_write_has_normal_permissions(tmp_path):
    from gpuperf.io.outputs import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def test_gzip_fast_path_equals_nibabel_and_rejects_truncation(tmp_path):
    rng = np.random.default_rng(3)
    img = nib.Nifti1Image((rng.random((5, 4, 3, 6)) * 1000).astype(np.int16), np.diag([2, 3, 4, 1]))
    img.header.set_slope_inter(0.5, -3.0)
    path = tmp_path / "s.nii.gz"
    nib.save(img, str(path))
    ours = load_image(path)
    ref = nib.load(str(path))
    np.testing.assert_array_equal(ours.data, ref.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(ours.affine, ref.affine)
    truncated = tmp_path / "t.nii.gz"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match="format") as e:
        load_image(truncated)
    assert "t.nii.gz" in str(e.value)


def test_chunk_floor_and_no_small_tail():
    sl = chunk_slices(1050, 10, memory_budget=1, min_voxels=256)
    assert [s.stop - s.start for s in sl] == [256, 256, 256, 282]
    assert chunk_slices(100, 10, memory_budget=1, min_voxels=256) == [slice(0, 100)]


def test_equal_maps_give_equal_files(series, tmp_path):
    """No time stamp in the gzip header: byte-identical outputs for identical maps."""
    import time

    path, data = series
    img = load_image(path)
    blobs = []
    for i in range(2):
        with OutputWriter(tmp_path / f"o{i}", "p", reference=img) as w:
            w.add_map("cbf", data[..., 0], units="a", description="b")
            w.commit()
        blobs.append((tmp_path / f"o{i}" / "p_cbf.nii.gz").read_bytes())
        time.sleep(1.1)  # a time stamp would differ now
    assert blobs[0] == blobs[1]


def test_read_ahead_gives_the_same_image_and_sees_a_changed_file(tmp_path):
    """load_image after read_ahead returns the file's image; a file rewritten in between is
    read again (the inflated bytes are keyed by path, size and mtime), and a file read ahead
    but missing by then is still reported by load_image."""
    import time

    from gpuperf.io import readahead

    rng = np.random.default_rng(2)
    a = rng.random((4, 3, 2, 5)).astype(np.float32)
    path = _save(tmp_path / "s.nii.gz", a)
    readahead.read_ahead(path)
    np.testing.assert_array_equal(load_image(path).data, a)
    assert not readahead._READ_AHEAD  # taken
    readahead.read_ahead(path)
    time.sleep(0.01)
    b = a[:, :, :, :3] * 2
    _save(path, b)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    np.testing.assert_array_equal(load_image(path).data, b)
    readahead._READ_AHEAD.clear()
    readahead.read_ahead(path)
    path.unlink()
    with pytest.raises(InputError, match="does not exist"):
        load_image(path)
    readahead._READ_AHEAD.clear()
    readahead.read_ahead(tmp_path / "missing.nii.gz")  # nothing to read: nothing started
    assert not readahead._READ_AHEAD


def test_start_reading_names_a_missing_input_and_reads_ahead(tmp_path):
    """A command's first step: a missing input is the same one-line error as load_image's; an
    existing .nii.gz is queued for the read-ahead (and load_image takes it)."""
    from gpuperf.io import readahead

    with pytest.raises(InputError, match=r"missing\.nii\.gz.*ASL series file does not exist"):
        readahead.start_reading(tmp_path / "missing.nii.gz", "ASL series")
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path = _save(tmp_path / "s.nii.gz", a)
    assert readahead.start_reading(path, "DSC series") == path
    assert len(readahead._READ_AHEAD) == 1
    np.testing.assert_array_equal(load_image(path).data, a)
    assert not readahead._READ_AHEAD


def test_expect_extra_checks_the_extra_files_like_the_maps(tmp_path):
    """Both pipelines check their extra files (the report) through one function: a name needs
    an extension, and an existing ``<prefix>_report.html`` is refused before any work."""
    from gpuperf.errors import GpuperfError, OutputExistsError
    from gpuperf.io.outputs import OutputWriter
    from gpuperf.io.stages import expect_extra

    with pytest.raises(GpuperfError, match="'report': expected a name with an extension"):
        expect_extra(OutputWriter(tmp_path, "sub-01"), ["report"])
    expect_extra(OutputWriter(tmp_path, "sub-01"), ["report.html"])  # nothing there yet
    (tmp_path / "sub-01_report.html").write_text("old")
    with pytest.raises(OutputExistsError, match="sub-01_report.html"):
        expect_extra(OutputWriter(tmp_path, "sub-01"), ["report.html"])
    expect_extra(OutputWriter(tmp_path, "sub-01", overwrite=True), ["report.html"])


@pytest.mark.parametrize(
    "kind", ["float32", "float32-big-endian", "int16-scaled", "float64", "float32-nii"]
)
def test_readonly_load_is_the_same_image(tmp_path, kind):
    """``load_image(readonly=True)`` gives the values of the plain load: a read-only view of the
    inflated bytes for native unscaled float32 ``.nii.gz``, the converted copy otherwise."""
    rng = np.random.default_rng(2)
    vals = rng.normal(0, 100, (4, 5, 3, 7))
    vals[1, 2, 0, 3] = np.nan
    dtype = {"int16-scaled": np.int16, "float64": np.float64}.get(kind, np.float32)
    arr = np.asarray(np.nan_to_num(vals) if dtype == np.int16 else vals, dtype=dtype)
    header = nib.Nifti1Header(endianness=">" if kind == "float32-big-endian" else "<")
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0]), header=header)
    if kind == "int16-scaled":
        img.header.set_slope_inter(0.5, 3.0)
    path = tmp_path / ("x.nii" if kind.endswith("-nii") else "x.nii.gz")
    nib.save(img, str(path))
    plain = load_image(path)
    ro = load_image(path, readonly=True)
    assert ro.data.dtype == np.float32 and ro.data.shape == plain.data.shape
    np.testing.assert_array_equal(ro.data, plain.data)
    assert ro.data.flags.writeable == (kind != "float32")
    assert ro.data.flags.f_contiguous
    stored = nib.load(str(path)).get_data_dtype()  # each case stores what it says
    assert stored.kind == np.dtype(dtype).kind and stored.itemsize == np.dtype(dtype).itemsize
    assert (stored.byteorder == ">") == (kind == "float32-big-endian")


def _reference_images(tmp_path):
    """Reference images whose headers differ in everything a map's header inherits."""
    rng = np.random.default_rng(5)
    aff = np.array([[-2.0, 0.1, 0, 90], [0.05, 2.2, 0, -120], [0, 0, 3.5, -60], [0, 0, 0, 1]])
    plain = nib.Nifti1Image(rng.random((5, 4, 3, 6)).astype(np.float32), aff)
    scaled = nib.Nifti1Image((rng.random((5, 4, 3)) * 900).astype(np.int16), np.eye(4))
    scaled.header.set_slope_inter(0.5, -3.0)
    scaled.header.set_xyzt_units("mm", "sec")
    scaled.header.set_qform(aff, code=1)
    scaled.header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=2)
    scaled.header.set_intent("t test", (12.0,))
    scaled.header["descrip"] = b"scanner text"
    big = nib.Nifti1Image(rng.random((5, 4, 3, 2)).astype(">f4"), aff)
    big.header.set_dim_info(0, 1, 2)
    ext = nib.Nifti1Image(rng.random((5, 4, 3)).astype(np.float64), aff)
    ext.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"a comment  "))
    v2 = nib.Nifti2Image(rng.random((5, 4, 3, 3)).astype(np.float32), aff)
    paths = []
    for name, img in {
        "plain.nii.gz": plain,
        "scaled.nii.gz": scaled,
        "big.nii": big,
        "ext.nii.gz": ext,
        "v2.nii": v2,
    }.items():
        nib.save(img, str(tmp_path / name))
        paths.append(tmp_path / name)
    return paths


def test_map_files_are_the_files_nibabel_writes(tmp_path):
    """The maps' NIfTI templates (one nibabel header per dtype and shape, the values and the
    name filled in) give byte for byte the file nibabel writes for each map: any reference
    header (scaled, big-endian, extensions, NIfTI-2, intents, codes), any dtype, any values."""
    import gzip

    from gpuperf.io.outputs import map_image

    rng = np.random.default_rng(6)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-42, -3.5], dtype=np.float32)
    payload_nan = np.array([0x7FC00123], dtype=np.uint32).view(np.float32)
    for k, path in enumerate(_reference_images(tmp_path)):
        ref = load_image(path)
        maps = {
            "cbf": rng.standard_normal(ref.shape3d).astype(np.float32),
            "cbv": rng.standard_normal(ref.shape3d).astype(np.float32),
            "status": rng.integers(-5, 1 << 20, ref.shape3d).astype(np.int32),
            "aifmask": rng.integers(0, 2, ref.shape3d).astype(np.uint8),
            "curves": rng.standard_normal(ref.shape3d + (2,)).astype(np.float32),
        }
        maps["cbv"].reshape(-1)[: special.size] = special
        maps["cbv"].reshape(-1)[-1] = payload_nan[0]
        for order in (list(maps), list(reversed(maps))):  # built from each dtype, derived
            out = tmp_path / f"o{k}_{order[0]}"
            with OutputWriter(out, "p", reference=ref) as w:
                for name in order:
                    w.add_map(name, maps[name], units="1", description="d", dtype=maps[name].dtype)
                w.commit()
            # every kind of map went through a template (the comparison is not vacuous)
            assert len(w._templates) == 4 and all(t is not None for t in w._templates.values())
            for name, data in maps.items():
                ours = gzip.decompress((out / f"p_{name}.nii.gz").read_bytes())
                assert ours == map_image(ref, name, data).to_bytes(), (path.name, name)


def test_sidecars_splice_the_provenance_block_as_one_dump():
    """merged_json(a, b, dump(b)) is json.dumps(jsonable({**a, **b}), indent=2), text and
    key order, for common keys, empty parts, nested values, non-string keys and NaN."""
    from gpuperf.io.outputs import merged_json
    from gpuperf.provenance import jsonable

    prov = {
        "SoftwareName": "gpuperf",
        "ElapsedSeconds": 1.5,
        "Parameters": {"Thresholds": [0.1, 0.2], "Mu": None, "Nested": {"a": [1, {"b": 2}]}},
        "Sources": ["/x/é.nii.gz"],
    }
    firsts = [
        {"Units": "ml/100g/min", "Description": "Cerebral blood flow"},
        {"Units": "1", "Flags": {"1": "NONFINITE_INPUT"}, "Value": float("nan")},
        {"Units": "1", "ElapsedSeconds": 9.0},  # a common key: the second's value, first place
        {1: "one", "1.0": 2.0, (2, 3): "tuple"},
        {},
    ]
    for second in (prov, {}, {"Only": 1}):
        text = json.dumps(jsonable(second), indent=2)
        for first in firsts:
            want = json.dumps(jsonable({**first, **second}), indent=2)
            assert merged_json(first, second, text) == want, (first, second)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_nifti2_gz_loads_as_nibabel_reads_it(tmp_path, endian):
    """A gzipped NIfTI-2 series (either byte order) is read like ``nibabel.load`` reads it;
    before, its header was parsed as NIfTI-1 first and nibabel refused it ("data code 0")."""
    from gpuperf.io.nifti import load_image

    rng = np.random.default_rng(2)
    aff = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -120], [0, 0, 3.0, -60], [0, 0, 0, 1]])
    img = nib.Nifti2Image(rng.random((5, 4, 3, 6)).astype(endian + "f4"), aff)
    for name in ("v2.nii.gz", "v2.nii"):
        nib.save(img, str(tmp_path / name))
        got = load_image(tmp_path / name)
        ref = nib.load(str(tmp_path / name))
        np.testing.assert_array_equal(got.data, np.asarray(ref.dataobj, dtype=np.float32))
        np.testing.assert_array_equal(got.affine, ref.affine)
        assert got.zooms() == tuple(float(z) for z in ref.header.get_zooms())
