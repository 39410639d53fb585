"""Progress reporting (Rich) that ``--quiet`` silences.

Library functions take an optional ``reporter``; ``None`` means silent, so the Python API never
prints unless asked to.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class Reporter:
    """Shows progress bars and log lines on stderr unless ``quiet``."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._console = None
        if not quiet:
            from rich.console import Console

            self._console = Console(stderr=True)

    def log(self, message: str) -> None:
        """Print one status line (Rich markup allowed)."""
        if self._console is not None:
            self._console.print(message)

    def warn(self, message: str) -> None:
        """Print a warning (silenced by ``quiet`` like everything else)."""
        if self._console is not None:  # the message is text: "[cuda12]" is not markup
            from rich.markup import escape

            self._console.print(f"[bold yellow]warning:[/] {escape(message)}")

    def track(
        self, items: Iterable[T], total: int | None = None, description: str = ""
    ) -> Iterator[T]:
        """Iterate over ``items`` with a progress bar."""
        if self._console is None:
            yield from items
            return
        from rich.progress import track

        yield from track(
            items, total=total, description=description, console=self._console, transient=True
        )

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner while a step without natural progress runs."""
        if self._console is None:
            yield
            return
        with self._console.status(message):
            yield


#: A reporter that never prints (the default of library functions).
SILENT = Reporter(quiet=True)


def ensure_reporter(reporter: Reporter | None) -> Reporter:
    return SILENT if reporter is None else reporter
