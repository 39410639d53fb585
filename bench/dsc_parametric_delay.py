"""Can a better bolus-delay estimate rescue ``--method parametric`` at SNR 100, MTT 4 s? (#11)

``bench/dsc_parametric_spread.py`` shows that at MTT 4 s the chi2 surface is flat along a
shape/delay ridge and that the CBF spread collapses when the delay is held at its true value.
This script asks whether any *estimate* of the delay gets close to that. On the MTT 4 s cells of
the accuracy grid (every residue shape, CBF 20/40, delays -2..+3 s, SNR 100) it fits, per curve:

- ``free``: the four-parameter fit (``DSCModel.fit`` with ``ARRIVAL_FRACTION = None``);
- ``rising edge``: the pipeline's default (``DSCModel.fit``): the arrival fitted on the rising
  edge with R = 1, refined once with the fitted residue, held (F-test to free it again);
- ``truth``: the delay held at its true value (the bound any delay estimate can reach);
- ``upslope``: delay from the rising edge alone (``F A(t - delay)``, ``A`` the AIF's integral,
  i.e. R = 1, on the frames until the curve reaches 50 % of its peak), then held (the first
  step of ``rising edge``, without its refinement and F-test);
- ``a=3``: delay from a fit with the shape held at 3, then held while the shape is refitted;
- ``group median``: the median of the free fits' delays over the replicates of the same
  condition (the best case of a spatial 3x3x3 median: every neighbour shares delay, CBF, MTT
  and shape), then held; with ``+F``: the free fit kept where it is better by F(1, n-4) > 4;
- ``group profile``: the delay that minimises the chi2 summed over the same replicates
  (profile over a 0.2 s grid, parabola through the minimum), then held.

It prints the delay error (median [q10, q90], s) and the CBF error (median [q25, q75], %) per
residue and CBF::

    python bench/dsc_parametric_delay.py          # 10 replicates, seed 0
    python bench/dsc_parametric_delay.py 10 1     # replicates, seed

Results and reading: docs/dsc.md ("Delay estimates tried").
"""

from __future__ import annotations

import sys

import numpy as np
from dsc_parametric_spread import (  # bench/: the same grid and fits
    KSCALE,
    MTT_S,
    SNR,
    best_of_starts,
    fit_inputs,
    four_parameter_fit,
    noisy_cells,
)

from gpuperf.benchmarks import accuracy as acc
from gpuperf.dsc import parametric as par

CBFS = (20.0, 40.0)
PROFILE_STEP_S = 0.2
PROFILE_HALF_WIDTH = 4  # grid points either side of the group median


def main(reps: int, seed: int) -> None:
    g = noisy_cells(reps, seed, CBFS)
    t, shape, cbf, delay, group = g["t"], g["shape"], g["cbf"], g["delay"], g["group"]
    n_groups = g["n_groups"]
    default = g["model"].fit(g["signal"], aif=g["aif"])
    fit = four_parameter_fit(g["model"], g["signal"], g["aif"])
    conc, w, consts = fit_inputs(g["signal"], g["aif"], g["te"])
    d_free = np.asarray(fit.maps["delay"], np.float64)
    chi_free = np.asarray(fit.maps["chi2"], np.float64)
    flow0 = np.asarray(fit.cbf, np.float64) * KSCALE
    mtt0 = np.clip(np.asarray(fit.mtt, np.float64), *par.MTT_BOUNDS_S)
    held = [False, False, False, True]

    def held_fit(d):
        return best_of_starts(t, conc, consts, w, np.stack([flow0, mtt0, d], axis=1), held)

    est = {"free": (d_free, np.asarray(fit.cbf, np.float64))}
    est["rising edge"] = (np.asarray(default.maps["delay"], np.float64),
                          np.asarray(default.cbf, np.float64))  # fmt: skip
    est["truth"] = (delay, held_fit(delay)[0][:, 0] / KSCALE)
    # rising edge: R = 1 (a box of the longest MTT), frames until 50 % of the peak
    w_up = par.rising_edge_weights(conc, 0.5)
    start_up = np.stack([flow0, np.full(delay.size, par.MTT_BOUNDS_S[1]), d_free], axis=1)
    up = best_of_starts(t, conc, consts, w_up, start_up, [False, True, True, False], (50.0,))
    d_up = up[0][:, 3]
    est["upslope"] = (d_up, held_fit(d_up)[0][:, 0] / KSCALE)
    p3 = best_of_starts(t, conc, consts, w, np.stack([flow0, mtt0, d_free], axis=1),
              [False, False, True, False], (3.0,))[0]  # fmt: skip
    est["a=3"] = (p3[:, 3], held_fit(p3[:, 3])[0][:, 0] / KSCALE)
    d_med = np.array([np.median(d_free[group == g]) for g in range(n_groups)])[group]
    p_med, chi_med = held_fit(d_med)
    est["group median"] = (d_med, p_med[:, 0] / KSCALE)
    f_stat = (chi_med - chi_free) / (chi_free / (w.sum(axis=1) - 4))
    est["group median +F"] = (d_med, np.where(f_stat > 4.0, est["free"][1], est["group median"][1]))
    offs = np.arange(-PROFILE_HALF_WIDTH, PROFILE_HALF_WIDTH + 1) * PROFILE_STEP_S
    prof = np.array([np.bincount(group, held_fit(d_med + o)[1], n_groups) for o in offs])
    k = np.clip(np.argmin(prof, axis=0), 1, offs.size - 2)
    cols = np.arange(n_groups)
    y0, y1, y2 = prof[k - 1, cols], prof[k, cols], prof[k + 1, cols]
    curv = y0 - 2 * y1 + y2
    step = np.where(curv > 0, 0.5 * (y0 - y2) / np.where(curv > 0, curv, 1.0), 0.0)
    d_prof = d_med + (offs[k] + np.clip(step, -1, 1) * PROFILE_STEP_S)[group]
    est["group profile"] = (d_prof, held_fit(d_prof)[0][:, 0] / KSCALE)

    print(f"MTT {MTT_S:g} s, SNR {SNR:g}, {reps} replicates x 6 delays per cell, seed {seed}")
    print(
        "| delay from | residue | delay error s, median [q10, q90] | "
        + " | ".join(f"CBF {f:g}: error %, median [q25, q75]" for f in CBFS)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(CBFS))
    for name, (d, c) in est.items():
        for sh in acc.PHYSIO_SHAPES:
            sel = shape == sh
            dq = np.percentile(d[sel] - delay[sel], [10, 50, 90])
            cells = []
            for f in CBFS:
                q = np.nanpercentile(100.0 * (c[sel & (cbf == f)] / f - 1.0), [25, 50, 75])
                cells.append(f"{q[1]:+.0f} [{q[0]:+.0f}, {q[2]:+.0f}]")
            print(
                f"| {name} | {sh} | {dq[1]:+.2f} [{dq[0]:+.2f}, {dq[2]:+.2f}] | "
                + " | ".join(cells)
                + " |",
                flush=True,
            )


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 10, int(args[1]) if len(args) > 1 else 0)
