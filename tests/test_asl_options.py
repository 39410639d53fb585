"""ASLOptions (one declaration per option), the kinetics registry, and unchanged maps."""

from __future__ import annotations

import hashlib
import inspect
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuperf.asl import kinetics
from gpuperf.asl.model import ASLModel
from gpuperf.asl.options import ASLOptions
from gpuperf.asl.pipeline import run_asl
from gpuperf.asl.simulate import write_phantom
from gpuperf.cli import app
from gpuperf.cli.asl import asl_command
from gpuperf.errors import InputError, OutputExistsError
from gpuperf.fit.models.buxton import BUXTON_PASL, BUXTON_PCASL

runner = CliRunner()


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"alpha": 2.0}, "--alpha"),
        ({"alpha": 0.0}, "--alpha"),
        ({"lambda_": 1.6}, "--lambda"),
        ({"lambda_": 0.0}, "--lambda"),
        ({"t1_tissue_s": 0.0}, "--t1-tissue"),
        ({"t1_blood_s": -1.0}, "--t1-blood"),
        ({"bs_factor": 1.5}, "--bs-factor"),
        ({"model": "bogus"}, "--model"),
        ({"m0_ref_tissue": "bone"}, "--m0-ref-tissue"),
        ({"cbf_bounds": (300.0, 0.0)}, "--cbf-bounds"),
        ({"max_iter": 0}, "--max-iter"),
        ({"model": "whitepaper", "arterial": True}, "--arterial"),
    ],
)
def test_out_of_range_options_are_refused_naming_the_flag(kwargs, flag):
    with pytest.raises(InputError, match=flag):
        ASLOptions(**kwargs)


def test_edges_of_the_ranges_are_accepted():
    o = ASLOptions(alpha=1.0, lambda_=1.5, bs_factor=1.0)
    assert (o.alpha, o.lambda_, o.bs_factor) == (1.0, 1.5, 1.0)
    assert ASLModel("PCASL", [1.0, 2.0], 1.8, options=o, device="cpu").alpha == 1.0


def test_model_keywords_and_options_object_agree():
    a = ASLModel("PCASL", [1.0, 2.0], 1.8, method="gkm", alpha=0.7, device="cpu")
    b = ASLModel("PCASL", [1.0, 2.0], 1.8, options=ASLOptions(model="gkm", alpha=0.7))
    assert a.fit_key()[:-3] == b.fit_key()[:-3]  # device/dtype/budget aside
    with pytest.raises(InputError, match="--alpha"):
        ASLModel("PCASL", [1.0], 1.8, alpha=2.0)
    with pytest.raises(TypeError, match="bogus"):
        ASLModel("PCASL", [1.0], 1.8, bogus=1)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("ph"), "single", shape=(6, 6, 1), repeats=2)


def test_flag_out_of_range_exits_2_naming_it(single, tmp_path):
    r = runner.invoke(
        app, ["asl", str(single["asl"]), "--out", str(tmp_path / "o"), "--alpha", "2"]
    )
    assert r.exit_code == 2 and "--alpha" in r.output and "(0, 1]" in r.output
    assert not (tmp_path / "o").exists()


def test_sidecar_field_out_of_range_is_refused_naming_file_and_field(single, tmp_path):
    js = single["asl"].parent / (single["asl"].name.replace(".nii.gz", ".json"))
    meta = json.loads(js.read_text())
    meta["LabelingEfficiency"] = 5
    js.write_text(json.dumps(meta))
    try:
        with pytest.raises(InputError, match="LabelingEfficiency") as err:
            run_asl(single["asl"], tmp_path / "o", device="cpu")
        assert js.name in str(err.value) and "(0, 1]" in str(err.value)
        r = runner.invoke(app, ["asl", str(single["asl"]), "--out", str(tmp_path / "c")])
        assert r.exit_code == 2 and "LabelingEfficiency" in r.output and js.name in r.output
        # an explicit --alpha does not make the bad field acceptable: the series is invalid
        with pytest.raises(InputError, match="LabelingEfficiency"):
            run_asl(single["asl"], tmp_path / "o2", device="cpu", alpha=0.8)
    finally:
        meta["LabelingEfficiency"] = 0.85
        js.write_text(json.dumps(meta))


def test_cli_choices_are_the_registry():
    spec = ASLOptions.option_specs()["model"]
    assert spec.allowed() == ("auto", *kinetics.METHODS) == ("auto", "whitepaper", "gkm")
    # the enum of the Typer parameter that options_command derived for --model
    choices = inspect.signature(asl_command).parameters["model"].annotation
    assert tuple(c.value for c in choices) == spec.allowed()


def test_a_registered_method_becomes_a_choice():
    kinetics.METHODS["demo"] = kinetics.ConsensusFormula(name="demo")
    try:
        assert "demo" in ASLOptions.option_specs()["model"].allowed()
        assert ASLOptions(model="demo").model == "demo"
    finally:
        del kinetics.METHODS["demo"]
    with pytest.raises(InputError, match="--model"):
        ASLOptions(model="demo")


def test_kinetic_models_by_labelling_type():
    assert kinetics.kinetic_model_for("PCASL").signal is BUXTON_PCASL
    assert kinetics.kinetic_model_for("CASL").signal is BUXTON_PCASL
    assert kinetics.kinetic_model_for("PASL").signal is BUXTON_PASL
    assert kinetics.kinetic_model_for("PCASL", arterial=True).tissue is BUXTON_PCASL
    assert kinetics.kinetic_model_for("PASL", arterial=True) is None
    with pytest.raises(InputError, match="arterial"):
        ASLModel("PASL", [1.0, 2.0], 0.8, arterial=True)


# ---- maps unchanged by the refactoring -------------------------------------------------------
# sha256 of the float32 maps (and int32 statuses) of each method on the phantom below, computed
# with the code before the options/registry refactoring (statuses translated to the flags:
# -1 -> OUTSIDE_MASK 8, 1 -> MAX_ITER 16, 2 -> FIT_FAILED 32, 4 -> AT_KINK 64). A change of any
# bit of any map fails.
EXPECTED = {
    "pcasl_gkm/cbf": "1e5061f00643f95f0dc4d223bad6e7e680884036bf85a6eea079390d9fca5933",
    "pcasl_gkm/att": "da27603c2fe7f81455d7a6b59d2a063ba727d447e25a6bda98b92adf8d3beaa4",
    "pcasl_gkm/cbf_stderr": "325931a7748444546d24d77fee1a769d6806038140384e40f068cb1f56bfad19",
    "pcasl_gkm/att_stderr": "40b19c9c09aa937590d8d2a792854aa140d26e1f1abca95018c5e65856730238",
    "pcasl_gkm/residual": "2d478e14293eba1337b1ec910536e3b9ec9378f8d3345c4715fa59700f505ab5",
    "pcasl_gkm/status": "2d327997888c58177055a90e72b94f192e7bbbf08a7153ae89a08407b30236e8",
    "pcasl_wp/cbf": "5e313a40ad2b31de851d965c969d2cd32835bfd6765ab7ab0d3166e3d555b5f7",
    "pcasl_wp/cbf_stderr": "7e3925d4992b9ea1e0b815fa5bfa40d7796cdcc3634abadcc6b3d80a8acda12e",
    "pcasl_wp/status": "156541e3b5170aa5ca56edf7da49021346a93719def0389144d000083d8287e6",
    "pasl_gkm/cbf": "2bfb9c24a58cf63ccf018b4e9647acc8fe00470e258871176f5c8b8a14cd3438",
    "pasl_gkm/att": "675328e4701eaf50277739d905913917fadc45289a1646a1ac65f5651f626990",
    "pasl_gkm/cbf_stderr": "eb7bb7552d99f957f37fb21bbc05b6406da6117abcbcc7cf2193a41ce0bea367",
    "pasl_gkm/att_stderr": "9d738ed1136627ecea371264dd7b5d4b0704ffa6e6e10720b8e94e33decbe556",
    "pasl_gkm/residual": "ac7f01eff95df7e6c5bdea435af8180e5031a6b44910bf00043bc70268059835",
    "pasl_gkm/status": "7465f7f74e6f84c6de100f048fd8acda49fd1d38123293949c540b976fb730ef",
    "pasl_wp/cbf": "3b5dc856eaee6625d7d27b270d753dc71349a2d905c6629af7454fea988b4dc5",
    "pasl_wp/cbf_stderr": "3a8e2eec1fb8da1c069840d319a27c2f4733ad7aec0fbedb9f37fb2dfb072262",
    "pasl_wp/status": "156541e3b5170aa5ca56edf7da49021346a93719def0389144d000083d8287e6",
    "pcasl_arterial/cbf": "9205d99483fe1caceba62720d512547f650d392826c5b484be4ce0cd7d778c87",
    "pcasl_arterial/att": "d29b74bd3029134eeb33d25b425df6f58ac4d021b3b2bfa192b5b9d5d8f02583",
    "pcasl_arterial/cbf_stderr": "f04fca122b75fc10ba3b3b80d74007f8c77d7183dc143634d85a3116bff8f88c",
    "pcasl_arterial/att_stderr": "583b32717d4aaa3d3ba6bacdcf780c225107b8df3c26ad7ef98db2e3235b5b5e",
    "pcasl_arterial/residual": "d7a4d374ed9b9e8dc6e48f5a4630245429f556756d0955fa8d1c048473013b60",
    "pcasl_arterial/abv": "a3bce493a89bd54e411142b0b5e1ccd8683f86549bb9a3de19119fe3d0e38a91",
    "pcasl_arterial/abat": "75595782987be27b79cc3b246b66fe0358c8d4c84cbb4a8746f5daabf710ee0b",
    "pcasl_arterial/status": "503626837afae683786d9c66febcd962b1d16f733827659c95ef81ad84a4cc45",
}


def _phantom():
    rng = np.random.default_rng(7)
    plds = np.array([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    cbf = rng.uniform(15, 90, 150)
    att = np.concatenate([rng.uniform(0.4, 1.9, 120), np.full(30, 1.0)])  # 1.0: a kink
    return plds, cbf, att, rng


def _digests() -> dict[str, str]:
    plds, cbf, att, rng = _phantom()
    out = {}
    for name, lt, tau, kw in (
        ("pcasl_gkm", "PCASL", 1.8, {}),
        ("pcasl_wp", "PCASL", 1.8, {"method": "whitepaper"}),
        ("pasl_gkm", "PASL", 0.8, {}),
        ("pasl_wp", "PASL", 0.8, {"method": "whitepaper"}),
        ("pcasl_arterial", "PCASL", 1.8, {"arterial": True}),
    ):
        m = ASLModel(lt, plds + (0.6 if lt == "PASL" else 0.0), tau, device="cpu", **kw)
        mk = ASLModel(lt, m.pld_s, tau, device="cpu", method="gkm")
        y, _ = mk.kinetic_model.evaluate(
            np, np.stack([cbf, att], 1), mk.sample_times(), mk.consts()
        )
        y = (y + np.random.default_rng(1).normal(0, 3e-4, y.shape)) * 1000.0
        n = 40 if kw.get("arterial") else len(cbf)
        m0 = np.full(n, 1000.0)
        m0[3] = 0.0
        mask = np.ones(n, bool)
        mask[5] = False
        fit = m.fit(y[:n].astype(np.float32), m0, mask=mask)
        for a in ("cbf", "att", "cbf_stderr", "att_stderr", "residual", "abv", "abat", "status"):
            v = getattr(fit, a)
            if v is not None:
                out[f"{name}/{a}"] = hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
    return out


def test_maps_are_bit_identical_to_before_the_refactoring():
    got = _digests()
    assert set(got) == set(EXPECTED)
    for key, digest in EXPECTED.items():
        assert got[key] == digest, key


def test_run_result_carries_what_the_caller_needs_to_publish_a_report(single, tmp_path):
    out = tmp_path / "o"
    res = run_asl(single["asl"], out, device="cpu", prefix="p", mask_path=single["mask"])
    assert (res.out_dir, res.prefix, res.modality) == (out, "p", "asl")
    assert res.mask_path == single["mask"] and res.report_extra == {}
    assert "report" not in res.outputs and not (out / "p_report.html").exists()


def test_extra_outputs_are_checked_before_any_work(single, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "p_report.html").write_text("old")
    with pytest.raises(OutputExistsError, match="p_report.html"):
        run_asl(single["asl"], out, device="cpu", prefix="p", extra_outputs=("report.html",))
    assert sorted(f.name for f in out.iterdir()) == ["p_report.html"]


def test_cli_publishes_the_report_unless_told_not_to(single, tmp_path):
    args = ["asl", str(single["asl"]), "--mask", str(single["mask"]), "--device", "cpu", "-q"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--prefix", "p"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "p_report.html").is_file()
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--prefix", "p", "--no-report"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "p_cbf.nii.gz").is_file()
    assert not (tmp_path / "b" / "p_report.html").exists()


def test_cohort_config_values_obey_the_same_ranges(tmp_path):
    cfg = tmp_path / "cohort.toml"
    with pytest.raises(InputError, match=r"asl\.alpha") as err:
        ASLOptions.from_mapping({"alpha": 2}, where=cfg)
    assert "cohort.toml" in str(err.value)
    with pytest.raises(InputError, match=r"asl\.report"):  # run-level keys are not options
        ASLOptions.from_mapping({"report": False}, where=cfg)
    o = ASLOptions.from_mapping({"model": "gkm", "cbf_bounds": [0, 200], "lambda_": 0.98})
    assert (o.model, o.cbf_bounds, o.lambda_) == ("gkm", (0.0, 200.0), 0.98)
