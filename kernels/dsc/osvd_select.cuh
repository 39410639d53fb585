// Per-voxel oSVD threshold selection (Wu et al., MRM 50:164, 2003): the math of one voxel.
//
// The residue at each swept threshold is a prefix sum over coefficient rows (frequencies sorted
// by decreasing |DFT(aif)|; see gpuperf/dsc/osvd.py):  r_s(t) = sum_{j < rows[s]} c_j b_j(t).
// Sets are visited from the highest threshold (fewest rows) down, so each coefficient is read
// once and added to the running residue r[0..L-1]; after each set the oscillation index
//     OI_s = (1/L) (1/max_t r) sum_{t=2}^{L-1} |r_t - 2 r_{t-1} + r_{t-2}|
// is stored. The choice is the lowest threshold (smallest s) with OI_s < limit, else the
// highest threshold (flagged by the caller as not passed). Then the chosen residue is rebuilt
// over the first N samples for its maximum (CBF) and the first index of it (Tmax).
// NumPy twin: gpuperf.dsc.osvd.select_numpy.
#pragma once
#include "common.cuh"

namespace gp_osvd {

// Per-thread array sizes; the host checks the plan against them before a launch
// (gpuperf.dsc.osvd.MAX_SETS / MAX_PAD).
constexpr int MAX_SETS = 32;
constexpr int MAX_PAD = 512;

template <typename T>
GP_INLINE T inf_value() {
    const T one = T(1);
    const T zero = T(0);
    return one / zero;
}

// coef: this voxel's coefficients, coef[j * stride] (time-major block: stride = V).
// basis: (n_coef, n_pad) row-major. set_rows: (n_sets), non-increasing.
template <typename T>
GP_HD void select_voxel(const T* __restrict__ coef, long long stride,
                        const T* __restrict__ basis, const int* __restrict__ set_rows,
                        int n_sets, int n_pad, int n_frames, T oi_limit, int& set_out,
                        T& oi_out, T& rmax_out, int& tmax_out) {
    T r[MAX_PAD];
    T ois[MAX_SETS];
    for (int t = 0; t < n_pad; ++t) r[t] = T(0);
    const T inv_pad = T(1) / T(n_pad);
    int prev = 0;
    for (int s = n_sets - 1; s >= 0; --s) {
        const int hi = set_rows[s];
        for (int j = prev; j < hi; ++j) {
            const T cj = coef[(long long)j * stride];
            const T* b = basis + (long long)j * n_pad;
            for (int t = 0; t < n_pad; ++t) r[t] += cj * b[t];
        }
        prev = hi;
        T mx = r[0];
        T rough = T(0);
        for (int t = 1; t < n_pad; ++t) mx = gp_max(mx, r[t]);
        for (int t = 2; t < n_pad; ++t) rough += gp_abs(r[t] - T(2) * r[t - 1] + r[t - 2]);
        ois[s] = mx > T(0) ? rough * inv_pad / mx : inf_value<T>();
    }
    int chosen = n_sets - 1;
    for (int s = 0; s < n_sets; ++s) {
        if (ois[s] < oi_limit) {
            chosen = s;
            break;
        }
    }
    set_out = chosen;
    oi_out = ois[chosen];
    // chosen residue over the first N samples: its maximum and the first index reaching it
    const int rows = set_rows[chosen];
    T best = T(0);
    int best_t = 0;
    for (int t = 0; t < n_frames; ++t) {
        T acc = T(0);
        for (int j = 0; j < rows; ++j) acc += coef[(long long)j * stride] * basis[(long long)j * n_pad + t];
        if (t == 0 || acc > best) {
            best = acc;
            best_t = t;
        }
    }
    rmax_out = best;
    tmax_out = best_t;
}

}  // namespace gp_osvd
