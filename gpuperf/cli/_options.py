"""Typer options derived from an options dataclass (:mod:`gpuperf.options`).

A command declares only what is not a method option (the input file, ``--out``, ``--device``
...); :func:`options_command` adds one Typer option per field of the options class, with the
field's flag, help (unit, range and default appended) and choices, and hands the command an
``options`` instance built from the values given::

    @options_command(DSCOptions)
    def dsc_command(series: Path = typer.Argument(...), ..., *, options: DSCOptions) -> None:
        run_dsc(series, out, options=options)

Bad values raise :class:`gpuperf.errors.InputError` naming the flag (the command's
``handle_errors`` turns it into one line and exit 2).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from gpuperf.options import Options, OptionSpec, specs

_TYPES: dict[str, Any] = {
    "float": float,
    "int": int,
    "bool": bool,
    "str": str,
    "path": Path,
    "strs": list[str],  # a repeatable flag; each value may hold several, comma-separated
}


def _help(spec: OptionSpec) -> str:
    parts = [spec.help.rstrip(".")]
    if spec.unit and spec.unit != "1":
        parts.append(f"unit {spec.unit}")
    rng = spec.range_text()
    if rng:
        parts.append(f"range {rng}")
    if spec.sidecar:
        parts.append(f"default: sidecar {spec.sidecar}")
    return "; ".join(parts) + "."


def parse_floats(text: str) -> tuple[float, ...]:
    """``'0.05:0.95:0.05'`` (inclusive range) or ``'0.1,0.2'`` -> tuple of floats.

    Raises ValueError on malformed text, a zero or wrong-signed step, or non-finite bounds
    (typer reports it as a bad value of the flag).
    """
    import math

    if ":" in text:
        start, stop, step = (float(x) for x in text.split(":"))
        if not all(math.isfinite(v) for v in (start, stop, step)):
            raise ValueError("bounds and step must be finite")
        if step == 0 or (stop - start) * step < 0:
            raise ValueError("the step must be non-zero and go from start towards stop")
        n = int(round((stop - start) / step)) + 1
        if n > 10_000:
            raise ValueError(f"{n} values; at most 10000")
        return tuple(round(start + i * step, 10) for i in range(n))
    values = tuple(float(x) for x in text.split(",") if x.strip())
    if not values:
        raise ValueError("no value given")
    return values


def _parameter(spec: OptionSpec, cli: Mapping[str, Any] | None = None) -> inspect.Parameter:
    """The Typer option of ``spec``; ``cli`` may replace its ``decls`` (flags), ``default``
    (``...``: required) or ``help`` (see :func:`options_command`)."""
    cli = cli or {}
    kind = spec.kind
    allowed = spec.allowed()
    decls = [spec.flag]
    if kind == "bool":
        base = spec.flag.lstrip("-")
        decls = [f"{spec.flag}/--no-{base}"]
        annotation: Any = bool
    elif allowed is not None:
        annotation = Enum(  # type: ignore[misc]
            f"{spec.name.title().replace('_', '')}Choice", {c: c for c in allowed}, type=str
        )
    elif kind == "floats":
        annotation = str
    else:
        annotation = _TYPES[kind]
    default = spec.default
    if kind == "floats" and default is not None:
        default = ",".join(f"{v:g}" for v in default)
    if spec.nullable or default is None:
        annotation = Optional[annotation]  # noqa: UP045 - typer reads the typing form
    decls = list(cli.get("decls", decls))
    default = cli.get("default", default)
    helptext = cli.get("help", _help(spec))
    opt = typer.Option(default, *decls, help=helptext, show_default=default is not None)
    return inspect.Parameter(
        spec.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation
    )


def _convert(spec: OptionSpec, value: Any) -> Any:
    if isinstance(value, Enum):
        value = value.value
    if spec.kind == "floats" and isinstance(value, str):
        from gpuperf.errors import InputError

        try:
            return parse_floats(value)
        except ValueError as exc:
            raise InputError(
                None, spec.label, f"expected start:stop:step or a,b,c; got {value!r} ({exc})"
            ) from None
    return value


def _is_options(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Options)


def options_command(
    options_cls: type,
    exclude: tuple[str, ...] = (),
    name: str = "options",
    *,
    cli: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable:
    """Decorator: add a Typer option per field of ``options_cls`` to a command.

    The decorated function takes a keyword-only argument ``name`` (default ``options``); the
    fields named in ``exclude`` are not offered on the command line (they keep their defaults).
    A command with two options objects stacks two decorators with different ``name``s (each
    parameter annotated with an :class:`~gpuperf.options.Options` class is left to its own
    decorator). ``cli`` maps a field to what its flag shows other than its declaration:
    ``decls`` (the flags, e.g. a short one), ``default`` (``...``: required) or ``help``.
    """
    cli = cli or {}
    fields = {n: s for n, s in specs(options_cls).items() if s.flag and n not in exclude}

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)  # the command modules use postponed annotations
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.name != name
        ]
        # a parameter typed as another options class is filled by another options_command
        own = [p for p in own if not _is_options(p.annotation)]
        clash = set(fields) & {p.name for p in own}
        if clash:
            raise TypeError(f"{fn.__name__}: parameters {clash} are options of {options_cls}")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {n: _convert(fields[n], kwargs.pop(n)) for n in list(kwargs) if n in fields}
            return fn(*args, **{name: options_cls(**values)}, **kwargs)

        params = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in own]
        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=params + [_parameter(s, cli.get(n)) for n, s in fields.items()]
        )
        wrapper.__annotations__ = {}  # typer must read the annotations of the signature
        return wrapper

    return decorate
