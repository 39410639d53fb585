"""DSC options (one declaration), the method and leakage registries, and the refactored model's
maps against the published per-method functions (bit for bit)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from gpuperf.cli import app
from gpuperf.dsc import DSCModel, methods
from gpuperf.dsc import deconvolution as dec
from gpuperf.dsc import leakage as leak_mod
from gpuperf.dsc import osvd as osvd_mod
from gpuperf.dsc.options import KH_DEFAULT, RHO_DEFAULT, DSCOptions
from gpuperf.dsc.simulate import phantom_arrays
from gpuperf.errors import InputError
from gpuperf.options import specs
from gpuperf.status import Status

runner = CliRunner()


# -- ranges and types: a bad value names its flag ------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"threshold": 0.0}, "--threshold"),
        ({"threshold": 1.5}, "--threshold"),
        ({"mu": -0.1}, "--mu"),
        ({"oi_limit": 0.0}, "--oi-limit"),
        ({"osvd_thresholds": (0.1, 1.0)}, "--osvd-thresholds"),
        ({"osvd_thresholds": (0.0, 0.5)}, "--osvd-thresholds"),
        ({"kh": 0.0}, "--kh"),
        ({"rho": -1.0}, "--rho"),
        ({"kh": True}, "--kh"),
        ({"te_s": 0.0}, "--te"),
        ({"te_s": 30.0}, "--te"),  # milliseconds
        ({"tr_s": 0.0}, "--tr"),
        ({"tr_s": 1500.0}, "--tr"),  # milliseconds
        ({"baseline": 0}, "--baseline"),
        ({"method": "svd"}, "--method"),
        ({"leakage": "weisskoff"}, "--leakage"),
        ({"aif_clusters": 0}, "--aif-clusters"),
        ({"kh": float("nan")}, "--kh"),
    ],
)
def test_bad_values_name_the_flag(kwargs, flag):
    with pytest.raises(InputError) as exc:
        DSCOptions(**kwargs)
    assert exc.value.field == flag


def test_boundaries_that_are_allowed():
    o = DSCOptions(threshold=1.0, mu=0.0, te_s=1.0, tr_s=20.0, baseline=1)
    assert (o.threshold, o.mu, o.te_s, o.tr_s, o.baseline) == (1.0, 0.0, 1.0, 20.0, 1)


def test_milliseconds_hint_in_seconds():
    with pytest.raises(InputError, match=r"milliseconds.*0\.03 for 30 ms"):
        DSCOptions(te_s=30)


def test_defaults_defined_once():
    o = DSCOptions()
    assert (o.kh, o.rho) == (KH_DEFAULT, RHO_DEFAULT) == (0.733, 1.04)
    assert o.osvd_thresholds == osvd_mod.DEFAULT_THRESHOLDS
    assert o.oi_limit == osvd_mod.DEFAULT_OI_LIMIT
    assert DSCOptions(method="ssvd").resolved_threshold == dec.SSVD_THRESHOLD
    assert DSCOptions(method="csvd").resolved_threshold == dec.CSVD_THRESHOLD
    assert DSCOptions(method="csvd", threshold=0.3).resolved_threshold == 0.3
    assert DSCOptions(method="tikhonov").resolved_threshold is None


def test_from_mapping_for_the_cohort_config():
    o = DSCOptions.from_mapping({"method": "csvd", "kh": 1, "rho": 1}, where="c.toml")
    assert (o.method, o.kh, o.rho) == ("csvd", 1.0, 1.0)
    with pytest.raises(InputError) as exc:
        DSCOptions.from_mapping({"threshold": 2}, where="c.toml")
    assert exc.value.field == "dsc.threshold" and exc.value.path == "c.toml"


def test_every_option_has_help_and_a_sidecar_key():
    names = DSCOptions.parameter_names()
    for name, spec in specs(DSCOptions).items():
        assert spec.help and spec.flag, name
        assert name in names, name
    params = DSCOptions(method="ssvd", te_s=0.03, tr_s=1.5).sidecar_parameters()
    assert params["Method"] == "ssvd" and params["Threshold"] == dec.SSVD_THRESHOLD
    assert params["EchoTime"] == 0.03 and params["OSVDThresholds"] == list(
        osvd_mod.DEFAULT_THRESHOLDS
    )
    # a run's options come back from its sidecar
    opts = DSCOptions(method="csvd", threshold=0.3, kh=1.0, baseline=4, te_s=0.02, tr_s=1.2)
    assert DSCOptions.from_parameters({**opts.sidecar_parameters(), "AIF": "auto"}) == opts


# -- the model: keywords and options= are the same model ----------------------------------------
def test_model_from_keywords_or_options():
    a = DSCModel(0.03, 1.5, "csvd", kh=1.0, threshold=0.15, device="cpu")
    opts = DSCOptions(te_s=0.03, tr_s=1.5, method="csvd", kh=1.0, threshold=0.15)
    b = DSCModel(options=opts, device="cpu")
    assert a.options == b.options and a.fit_key() == b.fit_key()
    assert a.parameters() == b.parameters()
    assert (a.method, a.kh, a.threshold, a.tr_s) == ("csvd", 1.0, 0.15, 1.5)
    # keywords override the options object
    assert DSCModel(options=opts, kh=0.5).kh == 0.5
    with pytest.raises(TypeError, match="nope"):
        DSCModel(0.03, 1.5, nope=1)
    with pytest.raises(InputError, match="EchoTime"):
        DSCModel(options=DSCOptions(tr_s=1.5))  # no TE anywhere


# -- registries ---------------------------------------------------------------------------------
def _help() -> str:
    out = runner.invoke(app, ["dsc", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"}).output
    return re.sub(r"\s+", " ", out)


def test_every_registered_entry_resolves_under_its_name():
    """Each "module:Class" line of the lazy registries names a class that exists, carries the
    registry's name, and (DSC methods) implements the default discretisation, which
    DSCOptions accepts without loading the method."""
    from gpuperf.asl import kinetics
    from gpuperf.dsc.constants import DISCRETISATIONS

    for registry in (methods.METHODS, leak_mod.CORRECTIONS, kinetics.METHODS):
        for name in registry.names():
            assert registry[name].name == name
    for name in methods.names():
        allowed = methods.get(name).discretisations
        assert "rectangle" in allowed and set(allowed) <= set(DISCRETISATIONS), name


def test_cli_choices_are_the_registries():
    text = _help()
    assert "<" + "|".join(methods.names()) + ">" in text
    assert "<" + "|".join(leak_mod.names()) + ">" in text
    assert set(methods.names()) == {"osvd", "csvd", "ssvd", "tikhonov", "parametric"}
    assert set(leak_mod.names()) == {"none", "bsw", "bidirectional"}
    # every option is on the command line, existing flags under their names
    for spec in specs(DSCOptions).values():
        assert spec.flag in text, spec.flag
    for flag in ("--mask", "--aif-mask", "--aif-curve", "--ref-mask", "--prefix", "--device"):
        assert flag in text


class _Doubled(methods.OperatorMethod):
    """A test method: cSVD's operator times two (so CBF doubles)."""

    name = "double_csvd"
    description = "test only"
    default_threshold = 0.1

    def plan(self, aif, dt_s, options, dtype, xp):
        return 2 * methods.get("csvd").plan(aif, dt_s, options, dtype, xp)


@pytest.fixture
def doubled():
    methods.register(_Doubled())
    yield "double_csvd"
    methods.unregister("double_csvd")


def test_a_registered_method_is_an_option_and_runs(doubled):
    assert doubled in specs(DSCOptions)["method"].allowed()
    assert DSCOptions(method=doubled).resolved_threshold == 0.1
    t = np.arange(40) * 1.5
    from gpuperf.dsc.simulate import aif_curve, tissue_curve

    conc = np.stack([tissue_curve(t, 60.0, 4.0, d) for d in (0.0, 1.0)])
    ref = DSCModel(0.03, 1.5, "csvd", device="cpu").fit_concentration(conc, aif_curve(t))
    got = DSCModel(0.03, 1.5, doubled, device="cpu").fit_concentration(conc, aif_curve(t))
    np.testing.assert_allclose(got.cbf, 2 * ref.cbf, rtol=1e-6)
    np.testing.assert_array_equal(got.cbv, ref.cbv)  # CBV does not depend on the method


def test_unregistered_method_is_refused_again(doubled):
    methods.unregister(doubled)
    with pytest.raises(InputError, match="--method"):
        DSCOptions(method=doubled)
    methods.register(_Doubled())  # the fixture removes it


def test_registry_refuses_a_second_method_of_the_same_name():
    with pytest.raises(ValueError, match="registered already"):
        methods.register(methods.SSVD())


# -- maps unchanged: the model equals the published per-method functions, bit for bit -----------
@pytest.fixture(scope="module")
def dr2s_block():
    ph = phantom_arrays(shape=(12, 10, 2), n_frames=40, noise_sd=0.01, seed=3)
    tissue = ph["tissue"]
    conc = ph["dr2s"][tissue].astype(np.float32)
    conc += np.random.default_rng(0).normal(0, 0.5, conc.shape).astype(np.float32)
    return conc, ph["aif"], ph["tr_s"]


@pytest.mark.parametrize("method", ["ssvd", "csvd", "tikhonov", "osvd"])
def test_maps_equal_the_method_functions(dr2s_block, method):
    """The registry object runs exactly the published deconvolution of its method (Ostergaard
    1996, Wu 2003, Calamante 2003): CBF = 6000 kH/rho max r, Tmax = dt argmax r, identical
    bits (one chunk), and the threshold map is the one used."""
    conc, aif, dt = dr2s_block
    kw = {"ssvd": {"threshold": 0.15}, "csvd": {}, "tikhonov": {"mu": 0.05}, "osvd": {}}[method]
    fit = DSCModel(0.03, dt, method, device="cpu", **kw).fit_concentration(
        conc, aif, return_residue=True
    )
    thr = None
    if method == "ssvd":
        r = dec.ssvd(conc, aif, dt, 0.15)
    elif method == "csvd":
        r = conc @ dec.csvd_operator(aif, dt, dec.CSVD_THRESHOLD).astype(np.float32)
    elif method == "tikhonov":
        r, thr = dec.tikhonov(conc, aif, dt, 0.05)
    else:
        res, plan, coef = osvd_mod.osvd(conc, aif, dt)
        r = osvd_mod.residue(coef, plan, res.set_index, np)
        np.testing.assert_array_equal(fit.oi, res.oi)
        thr = plan.set_threshold.astype(np.float32)[res.set_index]
        np.testing.assert_array_equal(
            (fit.status & Status.OSVD_NO_PASS) != 0, ~np.asarray(res.passed, bool)
        )
    rmax, tmax_i = r.max(axis=1), r.argmax(axis=1)
    if method == "osvd":  # the selection's own maximum (the kernel's twin), not of r
        rmax, tmax_i = res.rmax, res.tmax_index
    np.testing.assert_array_equal(fit.residue, r)
    np.testing.assert_array_equal(fit.cbf, (6000.0 * (KH_DEFAULT / RHO_DEFAULT) * rmax))
    np.testing.assert_array_equal(fit.tmax, tmax_i.astype(np.float32) * dt)
    if thr is None:
        thr = np.full(conc.shape[0], kw.get("threshold", dec.CSVD_THRESHOLD), np.float32)
    np.testing.assert_array_equal(fit.threshold, np.asarray(thr, np.float32))
    assert fit.cbf.dtype == np.float32 and np.isfinite(fit.cbf).all()


def test_status_uses_the_shared_flags():
    ph = phantom_arrays(shape=(8, 8, 2), n_frames=30, seed=1)
    sig = ph["signal"].copy()
    brain = ph["brain"]
    i, j = np.argwhere(brain[..., 0])[:2]
    sig[i[0], i[1], 0, 3] = -1.0
    sig[j[0], j[1], 0, 4] = np.nan
    fit = DSCModel(0.03, ph["tr_s"], "csvd", device="cpu").fit(sig, mask=brain)
    assert fit.status.dtype == np.int32
    assert fit.status[i[0], i[1], 0] & Status.NONPOSITIVE_INPUT
    assert fit.status[j[0], j[1], 0] & Status.NONFINITE_INPUT
    np.testing.assert_array_equal(fit.status[~brain], int(Status.OUTSIDE_MASK))
    assert np.isnan(fit.cbf[~brain]).all() and np.isnan(fit.cbf[i[0], i[1], 0])
    model = DSCModel(0.03, 1.5, "osvd")
    assert Status.OSVD_NO_PASS in model.status_flags
    assert Status.OSVD_NO_PASS not in DSCModel(0.03, 1.5, "csvd").status_flags


def test_bsw_via_the_leakage_registry():
    ph = phantom_arrays(shape=(16, 16, 2), n_frames=50, seed=2)
    m = DSCModel(0.03, ph["tr_s"], "csvd", leakage="bsw", device="cpu")
    fit = m.fit(ph["signal"], mask=ph["brain"])
    assert m.leakage_correction.maps == ("k2",) and fit.k2 is not None
    pos, neg = ph["leaky"] == 1, ph["leaky"] == 2
    assert np.nanmedian(fit.k2[pos]) > 0 > np.nanmedian(fit.k2[neg])
    assert (
        DSCModel(0.03, 1.5, "csvd").fit_concentration(np.ones((2, 10)), np.linspace(1, 2, 10)).k2
        is None
    )
