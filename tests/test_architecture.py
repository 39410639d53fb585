"""The layer rule of docs/ARCHITECTURE.md, checked on the source: a module imports only from its
own layer or below -- top-level imports, function-level imports and ``importlib`` strings alike.

errors/backend -> cuda -> fit -> io -> physics and pipelines (dsc, asl) -> report -> cohort ->
benchmarks -> cli
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gpuperf

PACKAGE = Path(gpuperf.__file__).parent

#: First component below ``gpuperf`` -> layer rank (lower ranks are lower layers).
LAYERS = {
    "_version": 0,
    "_lazy": 0,
    "errors": 0,
    "options": 0,
    "status": 0,
    "maps": 0,
    "svg": 0,
    "backend": 0,
    "progress": 0,
    "provenance": 0,
    "cuda": 1,
    "fit": 2,
    "io": 3,
    "dsc": 4,
    "asl": 4,
    "report": 5,
    "cohort": 6,
    "benchmarks": 7,
    "cli": 8,
    "__init__": 0,  # gpuperf/__init__.py holds only the version
    "__main__": 8,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "gpuperf", module
    if len(parts) == 1:
        return LAYERS["__init__"]
    return LAYERS[parts[1]]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every gpuperf import in a file, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    pkg = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # importlib.import_module("gpuperf.x"), entry-point strings, lazy-import tables
            text = node.value.split(":")[0]
            if text.startswith("gpuperf.") and " " not in text and "/" not in text:
                top = text.split(".")[1]
                if (PACKAGE / top).is_dir() or (PACKAGE / f"{top}.py").is_file():
                    found.append((node.lineno, text))
    return [(ln, m) for ln, m in found if m == "gpuperf" or m.startswith("gpuperf.")]


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module_name(path)
        rank = _layer(here)
        for line, mod in _imports(path):
            if mod.split(".")[:2] == ["gpuperf", "kernels"]:
                continue  # package data (CUDA sources), not code
            if _layer(mod) > rank:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} imports {mod}")
    return bad


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        _layer(_module_name(path))  # KeyError names a package missing from LAYERS


def test_no_import_against_the_layers():
    assert _violations() == []


def test_the_checker_sees_function_level_and_string_imports(tmp_path):
    """A planted violation of each kind is found (the test can fail)."""
    fake = PACKAGE / "dsc" / "_layer_probe_tmp.py"
    fake.write_text(
        "def f():\n    from gpuperf.report import x\n"
        "import importlib\nimportlib.import_module('gpuperf.cli.main')\n"
    )
    try:
        found = [v for v in _violations() if "_layer_probe_tmp" in v]
    finally:
        fake.unlink()
    assert len(found) == 2, found


def test_package_imports_cleanly_and_every_command_is_registered():
    """A broken module fails loudly: the CLI registers its commands without ImportError
    guards and resolving a lazily loaded command (gpuperf.cli._lazy) imports its module, so a
    missing command is a failure here, not a silent absence."""
    code = (
        "import typer, gpuperf.cli as c\n"
        "root = typer.main.get_command(c.app)\n"
        "ctx = root.context_class(root)\n"
        "names = sorted(n for n in root.list_commands(ctx) if root.get_command(ctx, n))\n"
        "sim = root.get_command(ctx, 'simulate')\n"
        "names += sorted('simulate ' + n for n in sim.list_commands(ctx) "
        "if sim.get_command(ctx, n))\n"
        "print(names)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in ("asl", "bench", "demo", "dsc", "info", "report", "run", "simulate asl",
                 "simulate dsc", "simulate study"):  # fmt: skip
        assert f"'{name}'" in out.stdout, out.stdout


@pytest.mark.parametrize("pkg", ["dsc", "asl", "fit", "io", "cuda"])
def test_lower_layers_import_without_the_upper_ones(pkg):
    """Importing a physics or engine package loads no report, cohort, cli or matplotlib."""
    code = (
        f"import sys, gpuperf.{pkg}; "
        "bad = [m for m in sys.modules if m.split('.')[:2] in "
        "(['gpuperf','report'], ['gpuperf','cohort'], ['gpuperf','cli'], "
        "['gpuperf','benchmarks']) or m == 'matplotlib']; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
