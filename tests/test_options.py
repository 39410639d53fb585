"""The options seam: one declaration gives validation, the CLI flags and the config keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gpuperf.cli._common import handle_errors
from gpuperf.cli._options import options_command, parse_floats
from gpuperf.errors import InputError
from gpuperf.options import Options, option, positive, specs

_METHODS = {"osvd": 1, "csvd": 2}


@dataclass(frozen=True)
class Demo(Options):
    section = "demo"
    method: str = option("osvd", "Method", flag="--method", choices=lambda: tuple(_METHODS))
    kh: float = option(0.733, "Haematocrit factor", flag="--kh", minimum=0, min_inclusive=False)
    te_s: float | None = option(
        None, "Echo time", flag="--te", unit="s", minimum=0, min_inclusive=False, maximum=1
    )
    thresholds: tuple = option((0.05, 0.1), "Thresholds", flag="--thr", minimum=0, maximum=1)
    gamma: bool = option(False, "Gamma fit", flag="--gamma")
    baseline: int | None = option(None, "Baseline frames", flag="--baseline", minimum=1)
    hidden: float = option(2.0, "Not on the command line")


def _app():
    app = typer.Typer()

    @app.command()
    @handle_errors
    @options_command(Demo)
    def cmd(series: Path = typer.Argument(...), *, options: Demo) -> None:
        typer.echo(repr(options))

    @app.command()
    def other() -> None:  # pragma: no cover - makes `cmd` a subcommand
        pass

    return app


def test_kinds_from_defaults_and_annotations():
    s = specs(Demo)
    assert [s[n].kind for n in s] == ["str", "float", "float", "floats", "bool", "int", "float"]
    assert s["te_s"].nullable and not s["kh"].nullable


@pytest.mark.parametrize(
    ("kwargs", "label"),
    [
        ({"kh": 0}, "--kh"),
        ({"kh": True}, "--kh"),  # a JSON true is not the number 1
        ({"kh": float("nan")}, "--kh"),
        ({"te_s": 30.0}, "--te"),
        ({"thresholds": (0.1, 2.0)}, "--thr"),
        ({"method": "ssvd"}, "--method"),
        ({"baseline": 2.5}, "--baseline"),
        ({"baseline": 0}, "--baseline"),
    ],
)
def test_bad_values_name_the_flag(kwargs, label):
    with pytest.raises(InputError) as exc:
        Demo(**kwargs)
    assert exc.value.field == label


def test_choices_follow_the_registry():
    _METHODS["tikhonov"] = 3
    try:
        assert Demo(method="tikhonov").method == "tikhonov"
    finally:
        del _METHODS["tikhonov"]
    with pytest.raises(InputError):
        Demo(method="tikhonov")


def test_from_mapping_names_file_and_key():
    assert Demo.from_mapping({"kh": 1, "baseline": 3}).baseline == 3
    with pytest.raises(InputError) as exc:
        Demo.from_mapping({"nope": 1}, "cfg.toml")
    assert exc.value.path == "cfg.toml" and exc.value.field == "demo.nope"
    assert "accepted: method, kh" in str(exc.value)
    with pytest.raises(InputError, match="demo.te_s"):
        Demo.from_mapping({"te_s": -1}, "cfg.toml")


def test_parameters_and_changed():
    d = Demo(kh=1.0)
    assert d.to_parameters()["kh"] == 1.0 and d.changed() == {"kh": 1.0}
    assert d.replace(kh=0.5).kh == 0.5


@pytest.mark.parametrize("text", ["0:1:0", "0.5:0.1:0.1", "0:inf:0.1", "a,b", ""])
def test_parse_floats_rejects(text):
    with pytest.raises(ValueError):
        parse_floats(text)


def test_parse_floats():
    assert parse_floats("0.1:0.3:0.1") == (0.1, 0.2, 0.3)
    assert parse_floats("0.2, 0.4") == (0.2, 0.4)


def test_cli_derived_from_options():
    runner = CliRunner()
    app = _app()
    ok = runner.invoke(
        app,
        ["cmd", "x", "--method", "csvd", "--te", "0.03", "--thr", "0.1:0.3:0.1", "--gamma",
         "--baseline", "3"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "method='csvd'" in ok.output and "thresholds=(0.1, 0.2, 0.3)" in ok.output
    assert "gamma=True" in ok.output and "baseline=3" in ok.output and "te_s=0.03" in ok.output
    bad = runner.invoke(app, ["cmd", "x", "--kh", "0"])
    assert bad.exit_code == 2 and "--kh" in bad.output and "Traceback" not in bad.output
    helptext = runner.invoke(app, ["cmd", "--help"], env={"COLUMNS": "200"}).output
    assert "--hidden" not in helptext and "unit s" in helptext


def _pipeline_with_options(series, out_dir, *, prefix=None, mask_path=None, options: Demo = None):
    """A pipeline shaped like run_dsc: run arguments plus an options object."""


def test_cohort_config_is_checked_against_the_options_class():
    from gpuperf.cohort.config import check_pipeline_options

    check_pipeline_options({"kh": 1.0, "mask_path": "m.nii", "report": False},
                           _pipeline_with_options, "c.toml", "dsc")  # fmt: skip
    with pytest.raises(InputError) as exc:
        check_pipeline_options({"kh": -1.0}, _pipeline_with_options, "c.toml", "dsc")
    assert (exc.value.path, exc.value.field) == ("c.toml", "dsc.kh")
    with pytest.raises(InputError, match="accepted: mask_path, method, kh"):
        check_pipeline_options({"methd": "osvd"}, _pipeline_with_options, "c.toml", "dsc")
    with pytest.raises(InputError, match="dsc.method"):
        check_pipeline_options({"method": "nonsense"}, _pipeline_with_options, "c.toml", "dsc")
    with pytest.raises(InputError, match="dsc.report"):
        check_pipeline_options({"report": "yes"}, _pipeline_with_options, "c.toml", "dsc")


def test_resolve_applies_keywords_over_an_options_object():
    base = Demo(kh=1.0)
    assert Demo.resolve(base, {"baseline": 3}).to_parameters() == {
        **base.to_parameters(),
        "baseline": 3,
    }
    assert Demo.resolve(None, {}) == Demo()
    # None as "the default" (keyword APIs whose defaults were None) vs None as a value
    assert Demo.resolve(base, {"kh": None}, none_is_default=True).kh == 1.0
    with pytest.raises(InputError):
        Demo.resolve(base, {"kh": None})  # kh is not nullable
    with pytest.raises(TypeError, match="run_demo: unexpected keyword argument"):
        Demo.resolve(None, {"nope": 1}, "run_demo")
    with pytest.raises(TypeError, match="must be a Demo"):
        Demo.resolve(object(), {})


def test_positive_is_the_open_lower_bound_at_zero():
    """``**positive(...)`` declares the same spec as the written-out bounds."""

    @dataclass(frozen=True)
    class P(Options):
        t1: float = option(1.3, "T1", flag="--t1", **positive(10, unit="s"))
        frac: tuple = option((0.5,), "Fractions", flag="--frac", **positive(1, max_inclusive=False))
        k: float = option(1.0, "Factor", flag="--k", **positive())

    s = specs(P)
    assert (s["t1"].minimum, s["t1"].min_inclusive, s["t1"].maximum) == (0, False, 10)
    assert s["t1"].unit == "s" and s["t1"].range_text() == "(0, 10]"
    assert s["frac"].range_text() == "(0, 1)" and s["frac"].unit is None
    assert s["k"].range_text() == "(0, inf)"
    with pytest.raises(InputError, match="--t1.*must lie in \\(0, 10\\] s, found 0"):
        P(t1=0.0)
    with pytest.raises(InputError, match="--frac"):
        P(frac=(0.5, 1.0))
    assert P(t1=10.0, frac=(0.99,), k=1e9).t1 == 10.0


def test_registry_imports_an_entry_on_first_lookup_only():
    """Names come without importing anything; a "module:attr" entry is imported on lookup (a
    class instantiated once, then cached); objects, deletion and unknown names behave as in a
    dict."""
    import sys

    from gpuperf.options import Registry, registry_add, registry_get

    sys.modules.pop("fractions", None)
    r = Registry({"frac": "fractions:Fraction", "pi": "math:pi"})
    assert r.names() == ("frac", "pi") and list(r) == ["frac", "pi"] and len(r) == 2
    assert "fractions" not in sys.modules
    first = r["frac"]
    assert type(first).__name__ == "Fraction" and r["frac"] is first  # instantiated once
    assert r["pi"] == pytest.approx(3.14159, abs=1e-5)
    registry_add(r, "e", 2.718, "constant")
    with pytest.raises(ValueError, match="constant 'e' is registered already"):
        registry_add(r, "e", 3.0, "constant")
    del r["e"]
    with pytest.raises(InputError, match="--const.*expected one of frac, pi"):
        registry_get(r, "e", "--const")


@dataclass(frozen=True)
class Lists(Options):
    labels: tuple[str, ...] | None = option(None, "Labels", flag="--label")
    fixed: tuple[str, ...] = option(("a",), "Fixed", kind="strs")


def test_strs_kind_splits_lists_and_checks_their_items():
    s = specs(Lists)
    assert s["labels"].kind == "strs" and s["fixed"].kind == "strs"
    assert Lists(labels="01, 02 03").labels == ("01", "02", "03")
    assert Lists(labels=["01,02", "03"]).labels == ("01", "02", "03")
    assert Lists(labels=[]).labels is None  # nothing given: the default
    assert Lists(fixed=[]).fixed == ()  # not nullable: an empty list stays one
    assert Lists.from_mapping({"labels": ["x"]}, section="s").labels == ("x",)
    with pytest.raises(InputError, match="--label.*expected strings"):
        Lists(labels=[1])
    with pytest.raises(InputError, match="s.labels.*expected strings"):
        Lists.from_mapping({"labels": 3}, section="s")
