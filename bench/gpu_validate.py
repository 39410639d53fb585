#!/usr/bin/env python
"""The whole GPU validation in one command, on a GPU machine without network.

    python bench/gpu_validate.py --wheels /path/to/wheels --target /tmp/gp-site --out /tmp/gp-out

1. installs what such a machine may lack (nibabel, isal: ``--need``) from the wheel folder
   ``--wheels`` into ``--target`` (``pip install --no-index --find-links``; nothing is fetched);
2. runs the ``gpu`` and ``emulated_gpu`` tests (``pytest -m "gpu or emulated_gpu"``) with the
   target folder on ``PYTHONPATH``; a test module that fails to collect fails the step;
3. runs ``bench/gpu_check.py`` (parity of every kernel, timings) writing into ``--out``;
4. writes ``<out>/summary.json`` and ``<out>/pytest.txt``; with ``--publish`` copies the
   gpu_check report into ``bench/results/`` and regenerates ``bench/RESULTS.md`` from it.

``--dry-run`` runs the same steps on a machine without a GPU (gpu tests collected only, the
emulated tier run, gpu_check in its dry-run mode). Exit 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env(target: Path | None) -> dict[str, str]:
    paths = [str(REPO)] + ([str(target)] if target else [])
    extra = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths + ([extra] if extra else [])))


def _run(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, str]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = -1, f"{exc.stdout or ''}\n(timed out after {timeout:.0f} s)"
    log.write_text(f"$ {' '.join(cmd)}\n{out}\n(exit {rc}, {time.perf_counter() - t0:.0f} s)\n")
    return rc, out


def install(wheels: Path | None, target: Path, need: list[str], out: Path) -> dict:
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    step = {"missing": missing, "installed": [], "ok": True}
    if not missing:
        return step
    if wheels is None or not wheels.is_dir():
        step.update(ok=False, error=f"{missing} missing and no --wheels folder given")
        return step
    target.mkdir(parents=True, exist_ok=True)
    # --no-deps: the machine's own numpy & co. stay; pip would otherwise try to resolve them
    # from the (absent) index and give up. Their own needs (packaging) come with pytest there.
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links",
           str(wheels), "--target", str(target), *missing]  # fmt: skip
    rc, _ = _run(cmd, dict(os.environ), out / "pip.txt", 600)
    step.update(ok=rc == 0, installed=missing if rc == 0 else [], returncode=rc)
    return step


def tests(dry_run: bool, env: dict[str, str], out: Path, timeout: float) -> dict:
    from gpu_check import parse_pytest_summary  # bench/ is on sys.path (this file's folder)

    base = [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"]
    steps = {}
    if dry_run:  # no GPU: the gpu tests must still collect; the emulated tier runs
        rc, text = _run(base + ["-m", "gpu", "--collect-only"], env, out / "collect.txt", timeout)
        c = parse_pytest_summary(text)
        steps["collect_gpu"] = {"returncode": rc, **c,
                                "ok": rc == 0 and c["tests"] > 0 and c["errors"] == 0}  # fmt: skip
        marker = "emulated_gpu"
    else:
        marker = "gpu or emulated_gpu"
    rc, text = _run(base + ["-m", marker], env, out / "pytest.txt", timeout)
    c = parse_pytest_summary(text)
    steps["tests"] = {"returncode": rc, "marker": marker, **c,
                      "ok": rc == 0 and c["passed"] > 0 and c["errors"] == 0}  # fmt: skip
    return steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Folder for every result.")
    ap.add_argument("--wheels", type=Path, help="Folder of wheels to install from (offline).")
    ap.add_argument("--target", type=Path, help="Install folder (default <out>/site).")
    ap.add_argument("--need", nargs="*", default=["nibabel", "isal"],
                    help="Modules to install when missing (default: nibabel isal).")  # fmt: skip
    ap.add_argument("--dry-run", action="store_true", help="No GPU: collect/emulate only.")
    ap.add_argument(
        "--publish",
        action="store_true",
        help="Copy the gpu_check report to bench/results and regenerate RESULTS.md.",
    )
    ap.add_argument("--tests-timeout-s", type=float, default=900.0)
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = (args.target or out / "site").resolve()
    summary: dict = {"dry_run": args.dry_run, "python": sys.version.split()[0]}
    summary["install"] = install(args.wheels, target, args.need, out)
    env = _env(target)
    summary.update(tests(args.dry_run, env, out, args.tests_timeout_s))
    check_out = out / "gpu_check"
    cmd = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(check_out),
           "--no-results-md", "--skip-tests"] + (["--dry-run"] if args.dry_run else [])  # fmt: skip
    rc, _ = _run(cmd, env, out / "gpu_check.txt", 900)
    summary["gpu_check"] = {"returncode": rc, "ok": rc == 0, "out": str(check_out)}
    if args.publish and not args.dry_run and rc == 0:
        for f in check_out.glob("*.*"):
            shutil.copy2(f, REPO / "bench" / "results" / f.name)
        sys.path.insert(0, str(REPO))
        from gpuperf.benchmarks.results import update_results

        md, _ = update_results(None, REPO / "bench")
        summary["published"] = str(md)
    summary["ok"] = all(v.get("ok", True) for v in summary.values() if isinstance(v, dict))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(("PASS" if summary["ok"] else "FAIL") + f": see {out / 'summary.json'}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
