"""Synthetic fit problems with known truth, for tests and benchmarks (not public API)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpuperf.fit.models import MODELS


@dataclass
class Problem:
    """``y`` (V, N) = model(truth) + noise at ``x`` (N, 1); ``p0`` a perturbed start."""

    model: str
    x: np.ndarray
    y: np.ndarray
    truth: np.ndarray
    p0: np.ndarray
    sigma: float


def monoexp_problem(
    rng: np.random.Generator,
    n_vox: int,
    n_samples: int = 12,
    sigma: float = 10.0,
    perturb: float = 0.3,
) -> Problem:
    """T2*-like decay: S0 in [500, 1500], R in [10, 40] 1/s, t in [0, 0.1] s."""
    t = np.linspace(0.0, 0.1, n_samples)
    truth = np.stack([rng.uniform(500, 1500, n_vox), rng.uniform(10, 40, n_vox)], axis=1)
    f, _ = MODELS["monoexp"].evaluate(np, truth, t[:, None], np.zeros(0))
    y = f + rng.normal(0.0, sigma, f.shape) if sigma > 0 else f
    p0 = truth * rng.uniform(1 - perturb, 1 + perturb, truth.shape)
    return Problem("monoexp", t[:, None], y, truth, p0, sigma)


def gammavar_problem(
    rng: np.random.Generator,
    n_vox: int,
    n_samples: int = 40,
    sigma: float = 0.05,
) -> Problem:
    """First-pass bolus sampled every 1 s: A in [1, 3], t0 in [5, 10] s, a in [2, 4],
    b in [1, 2] s (peak ~ 2-60); start from :meth:`GammaVar.initial_guess`."""
    t = np.arange(n_samples, dtype=np.float64)
    truth = np.stack(
        [
            rng.uniform(1, 3, n_vox),
            rng.uniform(5, 10, n_vox),
            rng.uniform(2, 4, n_vox),
            rng.uniform(1, 2, n_vox),
        ],
        axis=1,
    )
    f, _ = MODELS["gammavar"].evaluate(np, truth, t[:, None], np.zeros(0))
    y = f + rng.normal(0.0, sigma, f.shape) if sigma > 0 else f
    p0 = MODELS["gammavar"].initial_guess(t[:, None], y)
    return Problem("gammavar", t[:, None], y, truth, p0, sigma)
