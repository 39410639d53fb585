"""Input and output: NIfTI images, masks, sidecars, atomic output writing."""

from gpuperf._lazy import lazy_attributes

#: Public name -> the module that defines it (imported on first use, PEP 562: the command line
#: starts reading its input through :mod:`gpuperf.io.readahead` before NumPy and nibabel load).
_LAZY = {
    **{
        n: "gpuperf.io.nifti"
        for n in (
            "LoadedImage",
            "check_same_grid",
            "gather",
            "load_image",
            "load_mask",
            "read_sidecar",
            "scatter",
            "sidecar_path",
        )
    },
    "OutputWriter": "gpuperf.io.outputs",
}

__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY, globals())
