"""The report's reader of a run's maps gives what ``nibabel.load`` gives.

:func:`gpuperf.report.collect._load_nifti` reads single-file NIfTI-1 ``.nii.gz`` maps through
nibabel's header (checked and fixed on load) and array proxy without building the image; the
files here cover the data types, scaling, byte orders and spatial codes it must read exactly
as ``nibabel.load(...).get_fdata(dtype=float32)``, ``.affine`` and ``header.get_zooms()`` do.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from gpuperf.report import collect


def _affine() -> np.ndarray:
    a = np.deg2rad(15.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.5, 2.0, 3.5])
    affine[:3, 3] = (40.0, -20.0, 5.0)
    return affine


def _variants():
    rng = np.random.default_rng(1)
    shape = (7, 6, 5)
    base = rng.normal(50.0, 20.0, shape)
    base[0, 0, 0] = np.nan
    f32 = nib.Nifti1Image(base.astype(np.float32), _affine())
    yield "float32", f32
    i16 = nib.Nifti1Image(np.round(np.nan_to_num(base[..., None]) * 10).astype(np.int16), _affine())
    i16.header.set_slope_inter(0.1, -3.0)  # scaled integers, a trailing singleton axis
    yield "int16-scaled", i16
    yield "uint8-mask", nib.Nifti1Image((base > 50).astype(np.uint8), _affine())
    yield "float64", nib.Nifti1Image(base, _affine())
    big = nib.Nifti1Image(base.astype(">f4"), _affine())
    big.header.set_data_dtype(">f4")
    yield "big-endian", big
    q = nib.Nifti1Image(base.astype(np.float32), None)
    q.header.set_qform(_affine(), code=1)  # qform only
    q.header.set_sform(None, code=0)
    yield "qform-only", q
    none = nib.Nifti1Image(base.astype(np.float32), None)
    none.header.set_qform(None, code=0)
    none.header.set_sform(None, code=0)  # neither: the header's zooms, nibabel's base affine
    none.header.set_zooms((1.2, 1.3, 2.5))
    yield "no-xform", none
    yield "4d", nib.Nifti1Image(rng.normal(size=(*shape, 3)).astype(np.float32), _affine())


def _negative_pixdim() -> bytes:
    """A qform-only header with a negative voxel size: nibabel fixes it on load (the zooms and
    the affine are those of the absolute sizes); unchecked, the qform cannot be read."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((3, 4, 5))
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(np.diag([1.5, 2.0, 3.0, 1.0]), code=1)
    hdr.set_sform(None, code=0)
    hdr["pixdim"][2] = -2.0
    hdr["vox_offset"] = 352
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    return hdr.binaryblock + bytes(4) + data.tobytes(order="F")


@pytest.mark.parametrize(
    ("kind", "img"), [*_variants(), ("negative-pixdim", None)], ids=lambda v: str(v)[:15]
)
def test_load_nifti_reads_what_nibabel_loads(tmp_path, kind, img, monkeypatch):
    path = tmp_path / f"sub-01_{kind}.nii.gz"
    if img is None:
        path.write_bytes(gzip.compress(_negative_pixdim()))
    else:
        nib.save(img, path)
    ref = nib.load(path)
    want = np.asarray(ref.get_fdata(dtype=np.float32))
    while want.ndim > 3 and want.shape[-1] == 1:
        want = want[..., 0]
    import gpuperf.io.nifti as nifti

    def refuse(path):  # the fast path must serve these files itself
        raise AssertionError(f"{path}: read through the image object")

    monkeypatch.setattr(nifti, "open_nifti", refuse)
    data, affine, zooms = collect._load_nifti(path)
    assert data.dtype == np.float32 and data.shape == want.shape
    np.testing.assert_array_equal(data, want)
    np.testing.assert_array_equal(affine, ref.affine)
    assert zooms == tuple(float(z) for z in ref.header.get_zooms()[:3])


def test_load_nifti_falls_back_for_other_files(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    plain = tmp_path / "a.nii"
    nib.save(nib.Nifti1Image(data, _affine()), plain)
    pair = tmp_path / "b.img"
    nib.save(nib.Nifti1Pair(data, _affine()), pair)
    for path in (plain, pair):
        got, affine, _ = collect._load_nifti(path)
        np.testing.assert_array_equal(got, data)
        np.testing.assert_array_equal(affine, nib.load(path).affine)
    broken = tmp_path / "c.nii.gz"
    broken.write_bytes(b"not a gzip stream")
    with pytest.raises(Exception):  # noqa: B017 - whatever nibabel's own reader raises
        collect._load_nifti(broken)


def test_maps_written_for_a_report_are_read_back_from_memory(tmp_path, monkeypatch):
    """A writer that expects a report keeps each map's ``.nii`` bytes: the report's reader
    takes them instead of inflating the file (equal to what nibabel reads), through the
    publishing rename; a writer without a report keeps nothing; a file written again at the
    same path is read from disk; a kept entry whose gzip trailer does not match the file (a
    reused inode within the clock's resolution) is not used; ``forget_written`` empties it."""
    from gpuperf.io import outputs, readahead
    from gpuperf.io.nifti import load_image

    ref_path = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((7, 6, 5), np.float32), _affine()), ref_path)
    reference = load_image(ref_path)
    rng = np.random.default_rng(3)
    readahead.forget_written()
    inflated = []
    gunzip = readahead.gunzip_bytes
    monkeypatch.setattr(readahead, "gunzip_bytes", lambda raw: inflated.append(1) or gunzip(raw))

    def write(folder, report, values):
        w = outputs.OutputWriter(tmp_path / folder, "sub-01", reference=reference, overwrite=True)
        w.keep_for_report = report
        w.add_map("cbf", values)
        w.commit()
        return tmp_path / folder / "sub-01_cbf.nii.gz"

    cbf = rng.normal(50, 10, (7, 6, 5)).astype(np.float32)
    kept = write("a", True, cbf)
    assert readahead._WRITTEN and readahead.recall_written(kept) is not None
    data, affine, _ = collect._load_nifti(kept)
    assert not inflated  # from memory, after the rename that published it
    np.testing.assert_array_equal(data, np.asarray(nib.load(kept).get_fdata(dtype=np.float32)))
    np.testing.assert_array_equal(affine, nib.load(kept).affine)

    readahead.forget_written()
    plain = write("b", False, cbf)
    assert not readahead._WRITTEN and readahead.recall_written(plain) is None

    kept = write("c", True, cbf)
    kept.unlink()  # written again (another run, no report): not the kept bytes
    again = write("c", False, cbf + 1)
    np.testing.assert_array_equal(collect._load_nifti(again)[0], cbf + 1)
    assert inflated

    readahead.forget_written()
    kept = write("d", True, cbf)
    other = write("e", False, cbf * 2)
    monkeypatch.setattr(readahead, "_identity", lambda path: ("same", 1, 2, 3))
    readahead.remember_written(kept, b"stale", kept.read_bytes()[-8:])
    assert readahead.recall_written(kept) == b"stale"  # the identity and the trailer match
    assert readahead.recall_written(other) is None  # the identity alone is not enough
    np.testing.assert_array_equal(collect._load_nifti(other)[0], cbf * 2)
    readahead.forget_written()
    assert not readahead._WRITTEN
