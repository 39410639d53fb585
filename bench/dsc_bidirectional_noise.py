"""Bidirectional leakage correction with noise: CBV error against the apparent residue's SVD
threshold (``gpuperf.dsc.leakage.BIDIRECTIONAL_THRESHOLD``).

Gamma residues (shape 3), the phantom AIF's first pass, TR 1.5 s, 80 frames; non-leaky tissue
(CBF/MTT 50/4, 30/8, 20/12) and leaky tissue (K2 = -2e-4..4e-4 1/s relative to the AIF,
kep 0..0.03 1/s; the cases of ``tests/test_dsc_physiology.py``), noise-free and with
Gaussian noise of SD = each curve's peak / 100 (200 replicates), cSVD maps::

    python bench/dsc_bidirectional_noise.py            # thresholds 0.01, 0.2
    python bench/dsc_bidirectional_noise.py 0.05,0.1   # others

Results: docs/dsc.md (Leakage, bidirectional).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dsc_physiology import first_pass, tissue  # noqa: E402

from gpuperf.dsc import DSCModel, leakage  # noqa: E402

TR_S = 1.5
TE_S = 0.03
N_FRAMES = 80
#: (CBF, MTT, K2, kep)
CASES = ((50.0, 4.0, 0.0, 0.0), (30.0, 8.0, 0.0, 0.0), (20.0, 12.0, 0.0, 0.0),
         (30.0, 8.0, 2e-4, 0.0), (30.0, 8.0, 2e-4, 0.01), (30.0, 8.0, -2e-4, 0.01),
         (30.0, 8.0, 4e-4, 0.03), (50.0, 4.0, 3e-4, 0.02), (20.0, 12.0, 2e-4, 0.01))  # fmt: skip
REPS = 200


def _leak(k2: float, kep: float, t: np.ndarray) -> np.ndarray:
    """``K2 (C_a conv exp(-kep t))`` on a grid 20 times finer than the frames."""
    tf = np.arange(t.size * 20) * TR_S / 20
    full = np.convolve(first_pass(tf), np.exp(-kep * tf))[: tf.size] * TR_S / 20
    return k2 * full[::20]


def main(thresholds: list[float]) -> None:
    t = np.arange(N_FRAMES) * TR_S
    rows = np.array([tissue(t, f, m, "gamma3") - _leak(k, kp, t) for f, m, k, kp in CASES])
    truth = np.array([f * m / 60 for f, m, _, _ in CASES])
    rng = np.random.default_rng(1)
    clean = np.repeat(rows, REPS, axis=0)
    noisy = clean + rng.normal(0, 1, clean.shape) * clean.max(axis=1, keepdims=True) / 100
    aif = first_pass(t)
    old = leakage.BIDIRECTIONAL_THRESHOLD
    try:
        for thr in thresholds:
            leakage.BIDIRECTIONAL_THRESHOLD = thr
            m = DSCModel(TE_S, TR_S, "csvd", leakage="bidirectional", dtype=np.float64,
                         device="cpu")  # fmt: skip
            nf = 100 * (m.fit_concentration(rows, aif).cbv / truth - 1)
            err = 100 * (m.fit_concentration(noisy, aif).cbv.reshape(-1, REPS) / truth[:, None]
                         - 1)  # fmt: skip
            q25, q50, q75 = np.percentile(err, [25, 50, 75], axis=1)
            print(f"threshold {thr:g}: CBV error % (CBF, MTT, K2, kep): noise-free | SNR 100 "
                  "median [IQR]")  # fmt: skip
            for i, c in enumerate(CASES):
                print(f"  {c}: {nf[i]:+.1f} | {q50[i]:+.1f} [{q75[i] - q25[i]:.1f}]")
    finally:
        leakage.BIDIRECTIONAL_THRESHOLD = old


if __name__ == "__main__":
    arg = sys.argv[1] if len(sys.argv) > 1 else "0.01,0.2"
    main([float(x) for x in arg.split(",")])
