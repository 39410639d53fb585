#!/usr/bin/env python
"""Time ``ASLModel.fit`` on a 200 000-voxel x 7 PLD x 6 repeat pCASL phantom (issue #12 item 1).

Run from the repository root (``PYTHONPATH=<other checkout>`` to time another version)::

    python bench/asl_repeats_timing.py [--voxels 200000] [--runs 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voxels", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    import gpuperf
    from gpuperf.asl.model import ASLModel
    from gpuperf.fit.models.buxton import BUXTON_PCASL

    rng = np.random.default_rng(0)
    plds = np.tile([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5], 6)
    m = ASLModel("PCASL", plds, 1.8, device=a.device)
    truth = np.stack([rng.uniform(20, 90, a.voxels), rng.uniform(0.6, 2.0, a.voxels)], 1)
    f, _ = BUXTON_PCASL.evaluate(np, truth, m.sample_times(), m.consts())
    y = (f + rng.normal(0, 0.002, f.shape)).astype(np.float32)
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        fit = m.fit(y, 1.0)
        times.append(time.perf_counter() - t0)
    err = np.median(np.abs(fit.cbf - truth[:, 0]))
    print(f"{gpuperf.__file__}: fit s {[round(t, 2) for t in times]}, median |CBF err| {err:.4f}")


if __name__ == "__main__":
    main()
