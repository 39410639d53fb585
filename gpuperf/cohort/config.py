"""Cohort configuration: method options from a TOML or JSON file, merged with command-line flags.

The file has one table per concern; every key maps to an argument of a public function::

    [dsc]                 # keyword arguments of gpuperf.dsc.pipeline.run_dsc
    method = "osvd"
    leakage = "bsw"

    [asl]                 # keyword arguments of gpuperf.asl.pipeline.run_asl
    model = "auto"

    [inputs]              # how series and masks are found (gpuperf.cohort.bids.find_jobs)
    dsc_pattern = "perf/*_dsc.nii*"
    masks_dir = "derivatives/masks"   # relative paths: relative to this file
    brain_mask_desc = "brain"
    aif_mask_desc = "aif"

    [group]               # gpuperf.cohort.group.group_table
    masks_dir = "derivatives/masks"
    mask_descs = ["lesion", "NAWM"]
    atlas = "atlas/labels.nii.gz"
    atlas_labels = "atlas/labels.tsv"
    reference_region = "NAWM"

    [cluster]             # keyword arguments of dask_jobqueue.SLURMCluster
    queue = "gpu"
    job_extra_directives = ["--gres=gpu:1"]

The effective configuration (file + flags) is saved with the outputs so a run can be repeated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from gpuperf.errors import InputError

SECTIONS = ("dsc", "asl", "inputs", "group", "cluster")
_PATH_KEYS = {
    "inputs": ("masks_dir",),
    "group": ("masks_dir", "atlas", "atlas_labels"),
}
_INPUT_KEYS = ("dsc_pattern", "asl_pattern", "masks_dir", "brain_mask_desc", "aif_mask_desc")


@dataclass
class CohortConfig:
    """Options of a cohort run, one dict per section of the configuration file.

    Attributes
    ----------
    dsc, asl : dict
        Keyword arguments passed to the modality's pipeline for every subject.
    inputs : dict
        Keyword arguments of :func:`gpuperf.cohort.bids.find_jobs`.
    group : dict
        Keyword arguments of :func:`gpuperf.cohort.group.group_table`.
    cluster : dict
        Keyword arguments of ``dask_jobqueue.SLURMCluster`` (``--cluster slurm``).
    source : str or None
        The file the configuration was read from.
    """

    dsc: dict[str, Any] = field(default_factory=dict)
    asl: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    group: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError as exc:
            raise InputError(
                path,
                "format",
                "reading TOML on Python 3.10 needs the 'tomli' package; "
                "install it or use a JSON configuration",
            ) from exc
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, "TOML", f"not valid TOML ({exc})") from exc


def load_config(path: str | PathLike | None) -> CohortConfig:
    """Read a TOML (``.toml``) or JSON (``.json``) cohort configuration.

    Relative paths in ``[inputs]`` and ``[group]`` are taken relative to the file's folder.

    Raises
    ------
    InputError
        Unreadable file, unknown section, or a section that is not a table (names the file and
        the section).
    """
    if path is None:
        return CohortConfig()
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file", "configuration file does not exist")
    if p.suffix.lower() == ".toml":
        raw = _read_toml(p)
    elif p.suffix.lower() == ".json":
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(p, "JSON", f"not valid JSON ({exc})") from exc
    else:
        raise InputError(p, "format", f"expected a .toml or .json file, found {p.suffix!r}")
    if not isinstance(raw, dict):
        raise InputError(p, "JSON", "expected an object at top level")
    cfg = CohortConfig(source=str(p.resolve()))
    for key, value in raw.items():
        if key not in SECTIONS:
            raise InputError(p, key, f"unknown section; expected one of {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise InputError(p, key, f"expected a table/object, found {type(value).__name__}")
        value = dict(value)
        for pk in _PATH_KEYS.get(key, ()):
            if pk in value and value[pk] is not None:
                value[pk] = str((p.parent / str(value[pk])).resolve())
        if key == "inputs":
            unknown = sorted(set(value) - set(_INPUT_KEYS))
            if unknown:
                raise InputError(p, "inputs", f"unknown key(s) {unknown}; expected {_INPUT_KEYS}")
        setattr(cfg, key, value)
    return cfg


def _options_class(pipeline: Any) -> type | None:
    """The :class:`gpuperf.options.Options` subclass a pipeline takes as ``options=``."""
    import typing

    from gpuperf.options import Options

    try:
        hints = typing.get_type_hints(pipeline)
    except Exception:  # unresolvable annotations of a user pipeline: no options class
        return None
    hint = hints.get("options")
    for cand in (hint, *typing.get_args(hint)):
        if isinstance(cand, type) and issubclass(cand, Options):
            return cand
    return None


def check_pipeline_options(
    options: dict[str, Any], pipeline: Any, where: str | None, section: str
) -> None:
    """Raise :class:`InputError` for a key ``pipeline`` does not accept or a bad value.

    Keys are the pipeline's keyword arguments, the fields of its options class (the ``options``
    argument's type, e.g. :class:`gpuperf.dsc.options.DSCOptions`), and ``report``. Values of
    option fields are checked with the same rules as the command line's flags. All of it before
    any subject runs, so a typo in the configuration fails at once rather than once per subject.
    """
    import inspect

    from gpuperf.cohort.jobs import REPORT_OPTION
    from gpuperf.options import check_value, specs

    try:
        sig = inspect.signature(pipeline)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return
    params = sig.parameters
    opt_cls = _options_class(pipeline)
    fields = specs(opt_cls) if opt_cls is not None else {}
    if REPORT_OPTION in options and not isinstance(options[REPORT_OPTION], bool):
        raise InputError(where, f"{section}.{REPORT_OPTION}", "expected true or false")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and not fields:
        return
    reserved = {"out_dir", "prefix", "overwrite", "reporter", "options", "extra_outputs"}
    accepted = [k for k in list(params)[1:] if k not in reserved and k not in fields]
    accepted += [*fields, REPORT_OPTION]
    for key, value in options.items():
        if key in fields:
            check_value(fields[key], value, where, f"{section}.{key}")
        elif key not in accepted:
            raise InputError(
                where,
                f"{section}.{key}",
                f"not an option of the {section} pipeline; accepted: {', '.join(accepted)}",
            )
