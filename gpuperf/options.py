"""One declaration per option: defaults, help, units, ranges and sidecar fields.

Every method option of gpuperf is declared once, as a field of its modality's frozen options
dataclass (``gpuperf.dsc.options.DSCOptions``, ``gpuperf.asl.options.ASLOptions``), with
:func:`option`. Everything else derives from that declaration (the scikit-learn estimator idea):

- the Python API: ``DSCOptions(method="csvd")`` validates on construction;
- the command line: :mod:`gpuperf.cli._options` turns the fields into Typer options (flag, help
  text with unit and default, choices);
- the cohort configuration: :meth:`Options.from_mapping` accepts exactly the field names and
  checks their values before any subject runs;
- the sidecars: :meth:`Options.to_parameters` is what every map's JSON records.

Range and type rules are the same for a flag, a keyword argument, a configuration value and a
sidecar field (:func:`check_value`): a bool is never a number, numbers are finite, choices are
exact. This module sits at the bottom of the layers (it imports only :mod:`gpuperf.errors`).

Example
-------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo(Options):
...     kh: float = option(0.733, "Haematocrit factor", flag="--kh", minimum=0,
...                        min_inclusive=False)
>>> Demo(kh=1.0).kh
1.0
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from os import PathLike
from typing import Any, ClassVar, TypeVar

from gpuperf.errors import InputError

_KEY = "gpuperf.option"


@dataclass(frozen=True)
class OptionSpec:
    """What an options field declares (see :func:`option`).

    Attributes
    ----------
    name : str
        The field (and keyword argument, and configuration key) name.
    default : Any
        The default value (``None``: taken from the sidecar or decided by the method).
    help : str
        One line for ``--help`` and the documentation.
    flag : str or None
        The command-line flag; None keeps the option off the command line.
    unit : str or None
        Unit of a number ("s", "ml/100g/min", "1"), shown in the help text.
    kind : {'float', 'int', 'bool', 'str', 'path', 'floats', 'strs'}
        Type of the value; ``floats`` is a tuple of numbers, ``strs`` a tuple of strings (a
        string is split at commas and spaces: ``"01,02"`` is ``("01", "02")``).
    minimum, maximum : float or None
        Range of numbers (each element for ``floats``).
    min_inclusive, max_inclusive : bool
        Whether the bounds themselves are allowed.
    choices : tuple of str, or a callable returning one, or None
        Allowed strings; a callable lets a registry supply them (methods added later appear).
    sidecar : str or None
        The BIDS sidecar field that supplies the value when the option is None.
    nullable : bool
        Whether None is a valid value (true when the default is None).
    """

    name: str
    default: Any
    help: str
    flag: str | None = None
    unit: str | None = None
    kind: str = "float"
    minimum: float | None = None
    maximum: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    sidecar: str | None = None
    nullable: bool = False

    def allowed(self) -> tuple[str, ...] | None:
        """The allowed strings (registries are asked now, not at declaration)."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    @property
    def label(self) -> str:
        """How a message names the option: its flag, else its keyword."""
        return self.flag or self.name

    def range_text(self) -> str:
        """``(0, 1]``-style text of the range, or '' without bounds."""
        if self.minimum is None and self.maximum is None:
            return ""
        lo = "-inf" if self.minimum is None else f"{self.minimum:g}"
        hi = "inf" if self.maximum is None else f"{self.maximum:g}"
        left = "[" if self.minimum is not None and self.min_inclusive else "("
        right = "]" if self.maximum is not None and self.max_inclusive else ")"
        return f"{left}{lo}, {hi}{right}"


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    unit: str | None = None,
    kind: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    sidecar: str | None = None,
) -> Any:
    """Declare one option as a dataclass field.

    Parameters
    ----------
    default : Any
        Default value; ``None`` means "from the sidecar (``sidecar``) or decided by the method".
        Tuples are allowed (the options objects are frozen).
    help : str
        One-line description, shown by ``--help``.
    flag, unit, kind, minimum, maximum, min_inclusive, max_inclusive, choices, sidecar
        See :class:`OptionSpec`. ``kind`` is inferred from the default when not given
        (``float`` for None).

    Returns
    -------
    dataclasses.Field
    """
    if kind is None and default is None:
        kind = None  # decided from the field's annotation by :func:`specs`
    elif kind is None:
        if isinstance(default, bool):
            kind = "bool"
        elif isinstance(default, int):
            kind = "int"
        elif isinstance(default, str) or choices is not None:
            kind = "str"
        elif isinstance(default, tuple):
            kind = "floats"
        else:
            kind = "float"
    if kind is None and choices is not None:
        kind = "str"
    meta = {
        "default": default,
        "help": help,
        "flag": flag,
        "unit": unit,
        "kind": kind,
        "minimum": minimum,
        "maximum": maximum,
        "min_inclusive": min_inclusive,
        "max_inclusive": max_inclusive,
        "choices": choices,
        "sidecar": sidecar,
        "nullable": default is None,
    }
    return dataclasses.field(default=default, metadata={_KEY: meta})


def positive(
    maximum: float | None = None, *, unit: str | None = None, max_inclusive: bool = True
) -> dict[str, Any]:
    """Keyword arguments of :func:`option` for a number above zero: the range ``(0, maximum]``
    (``(0, maximum)`` with ``max_inclusive=False``; ``(0, inf)`` without ``maximum``), in
    ``unit``.

    Example: ``option(1.3, "T1 of tissue", flag="--t1-tissue", **positive(10, unit="s"))``.
    """
    out: dict[str, Any] = {"minimum": 0, "min_inclusive": False, "maximum": maximum}
    if unit is not None:
        out["unit"] = unit
    if not max_inclusive:
        out["max_inclusive"] = False
    return out


def _kind_of(annotation: Any) -> str:
    """Kind of an option whose default is None, from its annotation (``int | None``)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    text = str(text or annotation)
    for token, kind in (
        ("tuple[str", "strs"),
        ("tuple", "floats"),
        ("bool", "bool"),
        ("int", "int"),
        ("float", "float"),
        ("Path", "path"),
        ("str", "str"),
    ):
        if token in text:
            return kind
    return "float"


def specs(cls_or_obj: Any) -> dict[str, OptionSpec]:
    """Field name -> :class:`OptionSpec` of an options class or instance, in declaration order.

    Fields declared without :func:`option` are not options (internal state) and are skipped.
    """
    out: dict[str, OptionSpec] = {}
    for f in dataclasses.fields(cls_or_obj):
        meta = f.metadata.get(_KEY)
        if meta is not None:
            if meta["kind"] is None:
                meta = {**meta, "kind": _kind_of(f.type)}
            out[f.name] = OptionSpec(name=f.name, **meta)
    return out


def _fail(spec: OptionSpec, where: str | PathLike | None, label: str | None, msg: str) -> None:
    raise InputError(where, label or spec.label, msg)


def _number(spec, value, where, label, integer: bool):
    # bool is an int in Python; ``"EchoTime": true`` must not be read as 1
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, str):
            try:
                value = int(value) if integer else float(value)
            except ValueError:
                _fail(spec, where, label, f"expected a number, found {value!r}")
        else:
            what = "an integer" if integer else "a number"
            _fail(spec, where, label, f"expected {what}, found {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            _fail(spec, where, label, f"expected an integer, found {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            _fail(spec, where, label, f"must be a finite number, found {value!r}")
    lo, hi = spec.minimum, spec.maximum
    bad_lo = lo is not None and (value < lo or (value == lo and not spec.min_inclusive))
    bad_hi = hi is not None and (value > hi or (value == hi and not spec.max_inclusive))
    if bad_lo or bad_hi:
        unit = f" {spec.unit}" if spec.unit and spec.unit != "1" else ""
        _fail(spec, where, label, f"must lie in {spec.range_text()}{unit}, found {value:g}")
    return value


def check_value(
    spec: OptionSpec,
    value: Any,
    where: str | PathLike | None = None,
    label: str | None = None,
) -> Any:
    """Validate and normalise one value of ``spec``.

    Parameters
    ----------
    spec : OptionSpec
    value : Any
        From a flag, a keyword, a configuration file or a sidecar.
    where : path-like, optional
        The file the value came from (a sidecar, a configuration), for the message.
    label : str, optional
        How to name the value in the message (default: the flag, else the keyword); pass the
        sidecar field (``"EchoTime"``) or ``"dsc.kh"`` for values read from files.

    Returns
    -------
    The value in its canonical type (float, int, bool, str, tuple of floats or of strings, or
    None).

    Raises
    ------
    InputError
        Wrong type, non-finite number, out of range, or not one of the choices; the message
        names ``where`` and ``label``.
    """
    if value is None:
        if spec.nullable:
            return None
        _fail(spec, where, label, "a value is required")
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            _fail(spec, where, label, f"expected true or false, found {value!r}")
        return value
    if kind in ("float", "int"):
        return _number(spec, value, where, label, integer=kind == "int")
    if kind == "floats":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            value = (value,)
        items = tuple(_number(spec, v, where, label, integer=False) for v in value)
        if not items:
            _fail(spec, where, label, "expected at least one number")
        return items
    if kind == "strs":
        if isinstance(value, str) or not hasattr(value, "__iter__"):
            value = (value,)
        if not all(isinstance(v, str) for v in value):
            _fail(spec, where, label, f"expected strings, found {value!r}")
        items = tuple(part for v in value for part in v.replace(",", " ").split())
        return None if not items and spec.nullable else items
    if kind == "path":
        if not isinstance(value, (str, PathLike)):
            _fail(spec, where, label, f"expected a file path, found {value!r}")
        return value
    # str
    if hasattr(value, "value") and isinstance(value.value, str):  # an Enum member (Typer)
        value = value.value
    if not isinstance(value, str):
        _fail(spec, where, label, f"expected a string, found {value!r}")
    allowed = spec.allowed()
    if allowed is not None and value not in allowed:
        _fail(spec, where, label, f"expected one of {', '.join(allowed)}; found {value!r}")
    return value


T = TypeVar("T")


class Registry(MutableMapping[str, Any]):
    """Name -> entry: the choices of one option (the DSC ``--method`` and ``--leakage``, the
    ASL ``--model``), in the order ``--help`` lists them.

    An entry is an object, or a ``"module:attribute"`` string imported on first lookup (a class
    found there is instantiated once). The names -- the option's choices and their validation
    -- are known without importing the implementations (NumPy, the fit engine), so a command
    parses and checks its options, and starts reading its input, before those imports: the
    entry-point idea of Python packaging, inside one package.

    Examples
    --------
    >>> r = Registry({"fraction": "fractions:Fraction"})
    >>> list(r)
    ['fraction']
    >>> r["fraction"]
    Fraction(0, 1)
    """

    def __init__(self, entries: Mapping[str, Any] | None = None) -> None:
        self._entries: dict[str, Any] = dict(entries or {})

    def __getitem__(self, name: str) -> Any:
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            if isinstance(entry, type):
                entry = entry()
            self._entries[name] = entry
        return entry

    def __setitem__(self, name: str, entry: Any) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The registered names (nothing is imported)."""
        return tuple(self._entries)


def registry_get(registry: Mapping[str, T], name: str, flag: str) -> T:
    """``registry[name]``; otherwise an InputError naming ``flag`` (the option whose choices the
    registry gives) and listing the choices."""
    try:
        return registry[name]
    except KeyError:
        raise InputError(
            None, flag, f"expected one of {', '.join(registry)}; found {name!r}"
        ) from None


def registry_add(registry: dict[str, T], name: str, item: T, what: str) -> T:
    """Register ``item`` as ``name`` (a new choice of the option); ``ValueError`` when another
    item has the name already (``what`` says which kind, e.g. "leakage correction")."""
    old = registry.get(name)
    if old is not None and old is not item:
        raise ValueError(f"{what} {name!r} is registered already")
    registry[name] = item
    return item


class Choice:
    """Base of a registry entry that is one choice of an option (a DSC deconvolution method for
    ``--method``, a leakage correction for ``--leakage``); :func:`registry_add` files it under
    its name.

    Attributes
    ----------
    name : str
        The registry key: the option's value.
    description : str
        One line, with its reference.
    """

    name: str = ""
    description: str = ""


class Options:
    """Base of the frozen per-modality options dataclasses.

    Subclasses are ``@dataclass(frozen=True)`` with every field declared by :func:`option`;
    construction validates every value (:func:`check_value`) and a subclass may add cross-field
    rules in ``_check(self)``.
    """

    #: Configuration section / sidecar key of the modality ("dsc", "asl").
    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, spec in specs(self).items():
            value = check_value(spec, getattr(self, name))
            object.__setattr__(self, name, value)
        self._check()

    def _check(self) -> None:
        """Rules between fields (override)."""

    @classmethod
    def option_specs(cls) -> dict[str, OptionSpec]:
        """Field name -> :class:`OptionSpec`."""
        return specs(cls)

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[str, Any],
        where: str | PathLike | None = None,
        section: str | None = None,
    ):
        """Build from a configuration table, naming the file and ``section.key`` on error.

        Unknown keys are an error that lists the accepted ones.
        """
        sect = section or cls.section
        known = specs(cls)
        values = {}
        for key, value in mapping.items():
            label = f"{sect}.{key}" if sect else key
            if key not in known:
                raise InputError(
                    where,
                    label,
                    f"not an option of {sect or cls.__name__}; accepted: " + ", ".join(known),
                )
            values[key] = check_value(known[key], value, where, label)
        return cls(**values)

    @classmethod
    def resolve(
        cls,
        options: Options | None,
        values: Mapping[str, Any],
        caller: str | None = None,
        none_is_default: bool = False,
    ):
        """``options`` (default ``cls()``) with keyword ``values`` applied: how the public
        functions accept both today's keyword arguments and ``options=``.

        A keyword that is not an option is a TypeError, as for any Python function; with
        ``none_is_default``, keywords given as None keep the option's value.
        """
        who = caller or cls.__name__
        known = specs(cls)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TypeError(
                f"{who}: unexpected keyword argument(s) {', '.join(unknown)}; "
                f"options are: {', '.join(known)}"
            )
        base = cls() if options is None else options
        if not isinstance(base, cls):
            raise TypeError(f"{who}: options must be a {cls.__name__}, got {type(base).__name__}")
        if none_is_default:
            values = {k: v for k, v in values.items() if v is not None}
        return base.replace(**values) if values else base

    def replace(self, **changes: Any):
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_parameters(self) -> dict[str, Any]:
        """Every option and its value, for sidecars and the saved configuration."""
        return {name: getattr(self, name) for name in specs(self)}

    def changed(self) -> dict[str, Any]:
        """The options that differ from their defaults."""
        return {
            name: getattr(self, name)
            for name, spec in specs(self).items()
            if getattr(self, name) != spec.default
        }
