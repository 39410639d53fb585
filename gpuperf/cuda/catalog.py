"""Which template instantiations of each kernel file to build (tests, benchmarks, lint).

Every ``kernels/**/*.cu`` file must have an entry: ``tests/test_cuda_compile.py`` fails for a
kernel file that is missing here, so no kernel escapes the sm_80/sm_90 build and the ``.f64``
lint. Add one line per new file to :data:`KERNEL_FILES`. Packages above this layer add their
instantiations with :func:`register_instances` when they are imported (the fit models register
``lm_fit<T, Model>`` from :mod:`gpuperf.fit.models`); this module imports nothing above it, so
a complete catalog needs ``import gpuperf.fit`` first (the compile test and gpu_check do so).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class KernelBuild:
    """Instantiations of one kernel file.

    Attributes
    ----------
    float32, float64 : tuple of str
        Template kernel expressions, e.g. ``"lm_fit<float, MonoExp>"``; the float32 ones are
        compiled on their own and their PTX is linted for ``.f64`` instructions.
    includes : tuple of str
        Headers (relative to the kernel folder) included before the file.
    defines : dict
        ``-D`` macros.
    plain : bool
        The file's kernels are not templates: compiled as they are (no expressions).
    float32_only : bool
        For ``plain`` files: the whole PTX must be free of ``.f64``.
    """

    float32: tuple[str, ...] = ()
    float64: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()
    defines: dict = field(default_factory=dict)
    plain: bool = False
    float32_only: bool = False


#: Kernel file (relative to the kernel folder) -> how to build it. One line per file; files
#: whose instantiations are registered by a higher package start empty.
KERNEL_FILES: dict[str, KernelBuild] = {
    "fit/lm_fit.cu": KernelBuild(),
    "dsc/osvd_select.cu": KernelBuild(
        float32=("osvd_select<float>",), float64=("osvd_select<double>",)
    ),
}


def register_instances(
    relpath: str,
    float32: tuple[str, ...] = (),
    float64: tuple[str, ...] = (),
    includes: tuple[str, ...] = (),
) -> None:
    """Add instantiations (and the headers they need) to a kernel file's entry.

    Idempotent: an expression or header already present is not added twice.
    """
    if relpath not in KERNEL_FILES:
        raise KeyError(f"kernel file {relpath!r} is not in the catalog; add it to KERNEL_FILES")
    b = KERNEL_FILES[relpath]
    KERNEL_FILES[relpath] = replace(
        b,
        float32=tuple(dict.fromkeys((*b.float32, *float32))),
        float64=tuple(dict.fromkeys((*b.float64, *float64))),
        includes=tuple(dict.fromkeys((*b.includes, *includes))),
    )


def kernel_catalog() -> dict[str, KernelBuild]:
    """A copy of :data:`KERNEL_FILES` (with whatever has been registered so far)."""
    return dict(KERNEL_FILES)
