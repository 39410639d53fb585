// Per-voxel oSVD threshold selection (Wu et al., MRM 50:164, 2003): the math of one voxel.
//
// The residue at each swept threshold is a prefix sum over coefficient rows (frequencies sorted
// by decreasing |DFT(aif)|; see gpuperf/dsc/osvd.py):  r_s(t) = sum_{j < rows[s]} c_j b_j(t).
// Sets are visited from the lowest threshold (s = 0, most rows) up; for each, the oscillation
// index
//     OI_s = (1/L) (1/max_t r) sum_{t=2}^{L-1} |r_t - 2 r_{t-1} + r_{t-2}|
// is computed, and the first set with OI_s < limit is the choice (the lowest passing
// threshold), else the highest threshold (flagged by the caller as not passed). Then the chosen
// residue is rebuilt over the first N samples for its maximum (CBF) and the first index of it
// (Tmax). NumPy twin: gpuperf.dsc.osvd.select_numpy.
//
// Memory: nothing per sample is stored. The residue is built tile by tile (GP_OSVD_TILE samples
// in registers, fully unrolled), the running maximum and roughness carried across tiles with
// the last two samples for the second difference. Each r_s(t) is summed over j = 0, 1, ... in
// order, so every value is bit-identical to a residue kept in memory and updated set by set;
// the price is recomputing each visited set from its first row (cheap: basis rows are shared by
// every thread, coefficients stay in L1/L2), and visiting stops at the chosen set.
namespace gp_osvd {

// Largest plan the host accepts (gpuperf.dsc.osvd.MAX_SETS / MAX_PAD); nothing is sized by
// them any more, they bound the work of one thread.
constexpr int MAX_SETS = 32;
constexpr int MAX_PAD = 512;
#ifndef GP_OSVD_TILE
#define GP_OSVD_TILE 16
#endif

template <typename T>
GP_INLINE T inf_value() {
    const T one = T(1);
    const T zero = T(0);
    return one / zero;
}

// Oscillation index of the residue built from the first `rows` coefficient rows.
template <typename T>
GP_HD T oscillation_index(const T* __restrict__ coef, long long stride,
                          const T* __restrict__ basis, int rows, int n_pad) {
    constexpr int TT = GP_OSVD_TILE;
    T mx = T(0), rough = T(0), r1 = T(0), r2 = T(0);  // r1 = r_{t-1}, r2 = r_{t-2}
    for (int t0 = 0; t0 < n_pad; t0 += TT) {
        T acc[TT];
#pragma unroll
        for (int k = 0; k < TT; ++k) acc[k] = T(0);
        for (int j = 0; j < rows; ++j) {
            const T cj = coef[(long long)j * stride];
            const T* b = basis + (long long)j * n_pad + t0;
#pragma unroll
            for (int k = 0; k < TT; ++k)
                if (t0 + k < n_pad) acc[k] += cj * b[k];
        }
#pragma unroll
        for (int k = 0; k < TT; ++k) {
            const int t = t0 + k;
            if (t < n_pad) {
                const T r = acc[k];
                mx = t == 0 ? r : gp_max(mx, r);
                if (t >= 2) rough += gp_abs(r - T(2) * r1 + r2);
                r2 = r1;
                r1 = r;
            }
        }
    }
    const T inv_pad = T(1) / T(n_pad);
    return mx > T(0) ? rough * inv_pad / mx : inf_value<T>();
}

// coef: this voxel's coefficients, coef[j * stride] (time-major block: stride = V).
// basis: (n_coef, n_pad) row-major. set_rows: (n_sets), non-increasing.
template <typename T>
GP_HD void select_voxel(const T* __restrict__ coef, long long stride,
                        const T* __restrict__ basis, const int* __restrict__ set_rows,
                        int n_sets, int n_pad, int n_frames, T oi_limit, int& set_out,
                        T& oi_out, T& rmax_out, int& tmax_out) {
    int chosen = n_sets - 1;
    T chosen_oi = T(0);
    for (int s = 0; s < n_sets; ++s) {
        chosen_oi = oscillation_index<T>(coef, stride, basis, set_rows[s], n_pad);
        if (chosen_oi < oi_limit) {
            chosen = s;
            break;
        }
    }
    set_out = chosen;
    oi_out = chosen_oi;
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
