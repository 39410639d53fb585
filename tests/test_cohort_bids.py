"""BIDS discovery, the inheritance principle, and configuration files."""

from __future__ import annotations

import json

import pytest
from test_cohort_support import make_bids, write_series

from gpuperf.cohort import find_jobs, inherited_sidecars, load_config, merged_sidecar
from gpuperf.cohort.bids import parse_entities
from gpuperf.cohort.config import check_pipeline_options
from gpuperf.errors import InputError


def test_parse_entities():
    assert parse_entities("sub-01_ses-2_acq-ep_run-1_dsc.nii.gz") == (
        {"sub": "01", "ses": "2", "acq": "ep", "run": "1"},
        "dsc",
    )
    assert parse_entities("dsc.json") == ({}, "dsc")


def test_inheritance_principle_order_and_override(tmp_path):
    root = make_bids(tmp_path, subjects=("01",), sessions=("a", "b"))
    (root / "sub-01" / "sub-01_dsc.json").write_text(json.dumps({"RepetitionTime": 1.2}))
    (root / "sub-01" / "ses-a" / "perf" / "sub-01_ses-a_dsc.json").write_text(
        json.dumps({"EchoTime": 0.025})
    )
    # a sidecar with an entity the data file lacks does not apply
    (root / "sub-01" / "sub-01_acq-other_dsc.json").write_text(json.dumps({"EchoTime": 9}))
    # nor one with another suffix
    (root / "sub-01" / "sub-01_asl.json").write_text(json.dumps({"EchoTime": 8}))
    a = root / "sub-01" / "ses-a" / "perf" / "sub-01_ses-a_dsc.nii.gz"
    b = root / "sub-01" / "ses-b" / "perf" / "sub-01_ses-b_dsc.nii.gz"
    names = [p.name for p in inherited_sidecars(a, root)]
    assert names == ["dsc.json", "sub-01_dsc.json", "sub-01_ses-a_dsc.json"]
    assert merged_sidecar(a, root) == {"EchoTime": 0.025, "RepetitionTime": 1.2}
    assert merged_sidecar(b, root) == {"EchoTime": 0.03, "RepetitionTime": 1.2}


def test_find_jobs_labels_sessions_modalities(tmp_path):
    root = make_bids(
        tmp_path, subjects=("01", "02", "10"), sessions=("1", "2"), modalities=("dsc", "asl")
    )
    jobs = find_jobs(root)
    assert len(jobs) == 12
    assert [j.job_id for j in jobs[:2]] == ["sub-01_ses-1_asl", "sub-01_ses-1_dsc"]
    sel = find_jobs(root, participant_label=["sub-02", "10"], session_label=["2"], modality=["asl"])
    assert [(j.subject, j.session, j.modality) for j in sel] == [
        ("02", "2", "asl"),
        ("10", "2", "asl"),
    ]
    assert str(sel[0].out_subdir) == "sub-02/ses-2/perf"
    assert sel[0].prefix == "sub-02_ses-2_desc-asl"
    with pytest.raises(InputError, match="99"):
        find_jobs(root, participant_label=["99"])
    with pytest.raises(InputError, match="modality"):
        find_jobs(root, modality=["pet"])


def test_dsc_pattern_and_masks(tmp_path):
    root = make_bids(tmp_path / "bids", subjects=("01", "02"), modalities=())
    for sub in ("01", "02"):
        write_series(root / f"sub-{sub}" / "anat" / f"sub-{sub}_acq-dsc_bold.nii.gz", 1)
    with pytest.raises(InputError, match="no dsc series"):
        find_jobs(root, modality=["dsc"])
    masks = tmp_path / "masks"
    write_series(masks / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz", 2, n_frames=1)
    write_series(masks / "sub-01" / "anat" / "sub-01_desc-aif_mask.nii.gz", 3, n_frames=1)
    jobs = find_jobs(
        root, modality=["dsc"], dsc_pattern="anat/*_acq-dsc_bold.nii*", masks_dir=masks
    )
    assert [j.job_id for j in jobs] == ["sub-01_acq-dsc_dsc", "sub-02_acq-dsc_dsc"]
    assert set(jobs[0].companions) == {"mask", "aif_mask"}
    assert jobs[1].companions == {}  # no mask: the pipeline's automatic one


def test_config_toml_json_and_validation(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[dsc]\nmethod = "csvd"\n[inputs]\nmasks_dir = "m"\n[group]\natlas = "a.nii"\n')
    cfg = load_config(toml)
    assert cfg.dsc == {"method": "csvd"}
    assert cfg.inputs["masks_dir"] == str((tmp_path / "m").resolve())
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"asl": {"model": "gkm"}}))
    assert load_config(js).asl == {"model": "gkm"}
    bad = tmp_path / "bad.toml"
    bad.write_text("[dcs]\nmethod = 1\n")
    with pytest.raises(InputError, match="dcs"):
        load_config(bad)
    bad.write_text("[dsc\n")
    with pytest.raises(InputError, match="TOML"):
        load_config(bad)

    def pipe(series, out_dir, *, method="osvd", prefix=None, overwrite=False, reporter=None):
        return None

    check_pipeline_options({"method": "csvd"}, pipe, str(toml), "dsc")
    with pytest.raises(InputError, match="dsc.methd"):
        check_pipeline_options({"methd": "csvd"}, pipe, str(toml), "dsc")


def test_series_with_clashing_output_names_are_refused(tmp_path):
    root = make_bids(tmp_path, subjects=("01",))
    write_series(root / "sub-01" / "perf" / "sub-01_dsc.nii", 5)  # same entities, .nii
    with pytest.raises(InputError, match="same output names"):
        find_jobs(root)
