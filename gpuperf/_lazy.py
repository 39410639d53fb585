"""Lazy public names of a package (PEP 562): ``gpuperf.dsc.DSCModel`` imports its module on
first use, so that ``import gpuperf.dsc`` (and ``gpuperf --help``) stays cheap."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_attributes(
    package: str, table: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` whose public names live in the
    modules of ``table`` (name -> module); a resolved name is cached in ``namespace`` (the
    package's globals)."""

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(import_module(table[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__, sorted(table)
