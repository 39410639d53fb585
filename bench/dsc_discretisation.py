"""Rectangle vs trapezoid vs Volterra weights for sSVD and Tikhonov (issue #11, item 3).

Noise-free tissue curves (CBF 40 ml/100g/min, MTT 4/6/8/12 s, exponential, gamma (shape 3),
box and lognormal residues; fine-grid convolution with the phantom's gamma-variate AIF, TR
1.5 s, 60 frames), deconvolved in float64. Prints, per method, discretisation and residue
shape, the median CBF error with its range over the MTTs and the delays given::

    python bench/dsc_discretisation.py                 # delay 0
    python bench/dsc_discretisation.py 0,0.5,1,1.5,2,3 # delays (s)

Tikhonov with rectangle weights is the block-circulant filter; with trapezoid or Volterra
weights it is the causal Toeplitz matrix filtered in its SVD basis. Results: docs/dsc.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dsc_physiology import SHAPES, first_pass, tissue  # noqa: E402

from gpuperf.dsc import DSCModel  # noqa: E402

TR_S = 1.5
N_FRAMES = 60
CBF = 40.0
MTTS = (4.0, 6.0, 8.0, 12.0)


def main(delays: tuple[float, ...]) -> None:
    t = np.arange(N_FRAMES) * TR_S
    aif = first_pass(t)
    print(f"delays {delays} s; median CBF error [min, max] over MTT {MTTS} s and delays")
    for method in ("ssvd", "tikhonov"):
        for disc in ("rectangle", "trapezoid", "volterra"):
            model = DSCModel(
                0.03, TR_S, method, discretisation=disc, dtype=np.float64, device="cpu"
            )
            row = []
            for shape in SHAPES:
                curves = np.array(
                    [tissue(t, CBF, m, shape, d) for m in MTTS for d in delays], np.float64
                )
                err = model.fit_concentration(curves, aif).cbf / CBF - 1
                row.append(
                    f"{shape} {100 * np.median(err):+.0f}% "
                    f"[{100 * err.min():+.0f}, {100 * err.max():+.0f}]"
                )
            print(f"{method:9s} {disc:9s} " + "  ".join(row))


if __name__ == "__main__":
    arg = sys.argv[1] if len(sys.argv) > 1 else "0"
    main(tuple(float(x) for x in arg.split(",")))
