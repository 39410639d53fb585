"""``gpuperf report``: regenerates run reports (and a cohort page) from output folders."""

from __future__ import annotations

import typer
from test_report_run import write_outputs
from typer.testing import CliRunner

from gpuperf.cli.report import report_command

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("report")(report_command)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps Typer in multi-command mode
        pass

    return app


def test_report_command_writes_every_run(tmp_path):
    write_outputs(tmp_path, "a", "dsc", extra=False, shape=(12, 12, 3))
    write_outputs(tmp_path, "b", "asl", extra=False, shape=(12, 12, 3))
    r = runner.invoke(_app(), ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for prefix in ("a", "b"):
        page = tmp_path / f"{prefix}_report.html"
        assert page.exists() and str(page) in r.output
    assert "DSC report" in (tmp_path / "a_report.html").read_text(encoding="utf-8")
    assert "ASL report" in (tmp_path / "b_report.html").read_text(encoding="utf-8")
    r = runner.invoke(_app(), ["report", str(tmp_path), "--prefix", "a"])
    assert r.exit_code == 2 and "exists" in r.output  # no silent overwrite
    r = runner.invoke(_app(), ["report", str(tmp_path), "--prefix", "a", "--overwrite", "-q"])
    assert r.exit_code == 0 and r.output == ""


def test_report_command_cohort(tmp_path):
    for i in range(2):
        write_outputs(tmp_path / f"sub-{i}", f"sub-{i}", "asl", extra=False, shape=(10, 10, 2))
    r = runner.invoke(_app(), ["report", str(tmp_path), "--cohort"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "cohort_report.html").read_text(encoding="utf-8")
    assert 'href="sub-0/sub-0_report.html"' in text and 'href="sub-1/sub-1_report.html"' in text


def test_report_command_errors_are_one_line(tmp_path):
    r = runner.invoke(_app(), ["report", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output
    r = runner.invoke(_app(), ["report", str(tmp_path)])
    assert r.exit_code == 2 and "found no output" in r.output


def test_registered_in_main_app():
    from gpuperf.cli import app

    r = runner.invoke(app, ["report", "--help"])
    assert r.exit_code == 0 and "--cohort" in r.output
