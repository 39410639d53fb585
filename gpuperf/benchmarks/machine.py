"""Describe the machine and the checkout a benchmark ran on (for tables and RESULTS.md)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description() -> str:
    """``"<model> (<n> cores)"``, the device name used for CPU rows."""
    return f"{cpu_model()} ({os.cpu_count() or '?'} cores)"


def git_commit(repo: Path) -> tuple[str | None, bool]:
    """(commit id, dirty) of the checkout at ``repo``; (None, False) outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit or None, bool(status)
