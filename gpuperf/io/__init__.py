"""Input and output: NIfTI images, masks, sidecars, atomic output writing."""

from gpuperf.io.nifti import (
    LoadedImage,
    check_same_grid,
    gather,
    load_image,
    load_mask,
    read_sidecar,
    scatter,
    sidecar_path,
)
from gpuperf.io.outputs import OutputWriter

__all__ = [
    "LoadedImage",
    "OutputWriter",
    "check_same_grid",
    "gather",
    "load_image",
    "load_mask",
    "read_sidecar",
    "scatter",
    "sidecar_path",
]
