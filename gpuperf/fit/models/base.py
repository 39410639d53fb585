"""The model interface shared by the batched fitter's NumPy twin and its CUDA kernel.

A model is written twice, once per backend, and tests hold the two together:

- C++: ``kernels/models/<name>.cuh`` defines ``struct <Name> { static constexpr int NP, NX, NC;
  template <typename T> GP_HD static void eval(const T* p, const T* x, const T* c, T& f,
  T* dfdp); }`` -- the value and the Jacobian at one sample (Gpufit-style).
- Python: a :class:`Model` subclass whose :meth:`Model.evaluate` does the same arithmetic in
  the same order, vectorised over voxels and samples.

Adding a model = one ``.cuh`` file, its twin here, and one line in
:data:`gpuperf.fit.models.MODELS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Model:
    """Base class of fit models (subclasses set the class attributes and :meth:`evaluate`).

    Attributes
    ----------
    name : str
        Registry key.
    param_names, param_units : tuple of str
        Fitted parameters (P <= 8 of them) and their units.
    x_names : tuple of str
        Columns of the independent variable ``x`` (N, NX) shared by all voxels.
    const_names : tuple of str
        Model constants ``consts`` (NC,) shared by all voxels.
    const_table : bool
        True when a table of any length follows the named constants (e.g. a sampled input
        function that the model interpolates); ``consts`` then has at least NC values.
    cuda_header, cuda_struct : str
        Header (relative to the kernel folder) and the C++ struct implementing the model.
    default_lower, default_upper : tuple of float or None
        Bounds used when the caller gives none (None: unbounded).
    """

    name: str = ""
    param_names: tuple[str, ...] = ()
    param_units: tuple[str, ...] = ()
    x_names: tuple[str, ...] = ("t",)
    const_names: tuple[str, ...] = ()
    const_table: bool = False
    cuda_header: str = ""
    cuda_struct: str = ""
    default_lower: tuple[float, ...] | None = None
    default_upper: tuple[float, ...] | None = None

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def evaluate(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        """Model values and Jacobian.

        Parameters
        ----------
        xp : module
            ``numpy`` or ``cupy``.
        p : array (V, P)
            Parameters per voxel.
        x : array (N, NX)
            Independent variable(s), shared by all voxels.
        c : array (NC,)
            Constants.

        Returns
        -------
        f : array (V, N)
        J : array (V, N, P)
            ``J[v, n, k] = d f[v, n] / d p[v, k]``.
        """
        raise NotImplementedError

    def evaluate_samples(self, xp: Any, p: Any, x: Any, c: Any) -> tuple[Any, Any]:
        """:meth:`evaluate` in the sample-major layout of the NumPy fitter (voxels last).

        Parameters
        ----------
        p : array (P, V)
            Parameters, one column per voxel.
        x, c : as :meth:`evaluate`.

        Returns
        -------
        f : array (N, V)
        J : array (P, N, V)
            The values of :meth:`evaluate`, transposed. This default transposes
            :meth:`evaluate`'s result; models whose arithmetic broadcasts either way
            (``gpuperf.fit.models.buxton``) evaluate in this layout directly, element by
            element the same operations, so the values are identical and no copy is made.
        """
        f, jac = self.evaluate(xp, p.T, x, c)
        return xp.ascontiguousarray(f.T), xp.ascontiguousarray(jac.transpose(2, 1, 0))

    def initial_guess(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Starting parameters (V, P) estimated from the data ``y`` (V, N) at ``x`` (N, NX)."""
        raise NotImplementedError(f"model {self.name!r} has no initial_guess; pass p0")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
