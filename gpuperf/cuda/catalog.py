"""Which template instantiations of each kernel file to build (tests, benchmarks, lint).

Every ``kernels/**/*.cu`` file must have an entry: ``tests/test_cuda_compile.py`` fails for a
kernel file that is missing here, so no kernel escapes the sm_80/sm_90 build and the ``.f64``
lint. Add one line per new file to :data:`KERNEL_FILES`; the fit kernel's instantiations are
derived from the model registry, so a new model is covered without touching this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


def _fit_build() -> KernelBuild:
    from gpuperf.fit.models import MODELS

    models = list(MODELS.values())
    return KernelBuild(
        float32=tuple(f"lm_fit<float, {m.cuda_struct}>" for m in models),
        float64=tuple(f"lm_fit<double, {m.cuda_struct}>" for m in models),
        includes=tuple(dict.fromkeys(m.cuda_header for m in models)),
    )


#: Kernel file (relative to the kernel folder) -> how to build it. One line per file.
KERNEL_FILES: dict[str, object] = {
    "fit/lm_fit.cu": _fit_build,
    "dsc/osvd_select.cu": KernelBuild(
        float32=("osvd_select<float>",), float64=("osvd_select<double>",)
    ),
}


def kernel_catalog() -> dict[str, KernelBuild]:
    """:data:`KERNEL_FILES` with the lazily derived entries resolved."""
    return {k: (v() if callable(v) else v) for k, v in KERNEL_FILES.items()}
