// Batched, box-constrained Levenberg-Marquardt fit: one thread per voxel, one fused launch.
//
// Algorithm (Levenberg 1944; Marquardt, J SIAM 11:431, 1963; Press et al., Numerical Recipes
// 3rd ed. section 15.5.2): minimise chi2(p) = sum_n w_n (y_n - f(x_n; p))^2.
//   * Damped normal equations (A + lambda diag(A)) delta = g, A = J^T W J, g = J^T W r,
//     solved by an explicit Cholesky factorisation (packed lower triangle in registers).
//   * Box bounds by projection: p_new = clamp(p + delta). A parameter sitting on a bound whose
//     gradient points outwards is frozen for that step (projected/active-set Gauss-Newton), so
//     the fixed point is the constrained minimum and not an artefact of clamping.
//   * A trial is accepted when chi2_new <= chi2 + accept_tol (noise + noise_new): not worse
//     beyond the rounding error of chi2 itself (noise: see accumulate()). In float32 the
//     rounding of f alone blurs chi2 by ~1e-3 parameter standard errors; a strict
//     chi2_new <= chi2 would stop wherever that noise first rejects a step, whereas the
//     Gauss-Newton steps (from g, which is accurate) keep converging. Accepted: lambda /= 10
//     (floor lambda_min); rejected: lambda *= 10, and above lambda_max no step can lower chi2:
//     converged (a minimum to working precision).
//   * Converged after an accepted step when every free |dp_k| <= xtol (|p_k| + xtol), or when
//     both the actual and the predicted reduction of chi2 are <= ftol chi2 (MINPACK-style).
//   * Every trial (accepted or not) counts as one iteration against max_iter.
//   * FAILED: non-finite or negative-weight input, or a non-finite model at the start (all
//     outputs NaN); or a free parameter off its bounds with no influence on the model (zero
//     diagonal of A: singular), where the last iterate is kept and stderr is NaN.
//   * stderr_k = sqrt(diag((J^T W J)^-1)_k chi2 / (N - P_free)) over the free parameters;
//     0 for fixed parameters; NaN when N <= P_free or J^T W J is singular.
// The NumPy twin (gpuperf/fit/_numpy_lm.py) performs the same operations in the same order.
//
// Layout (docs/ARCHITECTURE.md): y and per-voxel weights (N, V) time-major, y[n*V + v];
// p0, lower, upper, params, stderr (P, V), params[k*V + v]; x (N, NX) shared; c (NC) shared.
// p0 (p0_per_voxel = 0) and lower/upper (bounds_per_voxel = 0) may instead be shared by all
// voxels, (P,): p0[k]. Shared values then go up as P numbers, not a (P, V) copy.
#include "common.cuh"

namespace gp_lm {

enum Status { CONVERGED = 0, MAX_ITER = 1, FAILED = 2 };

GP_INLINE int tri(int i, int j) { return i * (i + 1) / 2 + j; }  // packed index, i >= j

template <typename T>
GP_INLINE T clamp(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Accumulate chi2, A = J^T W J (packed lower triangle) and g = J^T W r at p, summing over the
// samples in order n = 0..N-1, and the rounding scale of chi2, noise = sum |w r| (|y| + |f|)
// (each w r^2 term carries an error ~ eps |w r| (|y| + |f|)). False when anything is not finite.
template <typename T, class Model>
GP_HD bool accumulate(const T* p, const T* __restrict__ y, const T* __restrict__ w,
                      int w_per_voxel, const T* __restrict__ x, const T* __restrict__ c,
                      int n_samples, long long n_vox, long long v, T& chi2, T& noise, T* A,
                      T* g) {
    constexpr int P = Model::NP;
    chi2 = T(0);
    noise = T(0);
    for (int k = 0; k < P * (P + 1) / 2; ++k) A[k] = T(0);
    for (int k = 0; k < P; ++k) g[k] = T(0);
    for (int n = 0; n < n_samples; ++n) {
        T f, d[P];
        Model::eval(p, x + (long long)n * Model::NX, c, f, d);
        const T wn = w == nullptr ? T(1) : (w_per_voxel ? w[(long long)n * n_vox + v] : w[n]);
        const T yn = y[(long long)n * n_vox + v];
        const T r = yn - f;
        const T wr = wn * r;
        chi2 += wr * r;
        noise += gp_abs(wr) * (gp_abs(yn) + gp_abs(f));
        for (int k = 0; k < P; ++k) {
            g[k] += wr * d[k];
            const T wd = wn * d[k];
            for (int l = 0; l <= k; ++l) A[tri(k, l)] += wd * d[l];
        }
    }
    bool finite = gp_isfinite(chi2);
    for (int k = 0; k < P; ++k) finite = finite && gp_isfinite(g[k]);
    for (int k = 0; k < P * (P + 1) / 2; ++k) finite = finite && gp_isfinite(A[k]);
    return finite;
}

// Cholesky factor L (packed) of M = A + lambda diag(A) restricted to the parameters with
// act[k]; rows/columns of the others are the identity. Returns false on a non-positive pivot.
template <typename T, int P>
GP_HD bool cholesky(const T* A, const bool* act, T lambda, T* L) {
    for (int j = 0; j < P; ++j) {
        T s = act[j] ? A[tri(j, j)] + lambda * A[tri(j, j)] : T(1);
        for (int k = 0; k < j; ++k) s -= L[tri(j, k)] * L[tri(j, k)];
        if (!(s > T(0))) return false;  // also catches NaN
        const T djj = gp_sqrt(s);
        L[tri(j, j)] = djj;
        for (int i = j + 1; i < P; ++i) {
            T t = (act[i] && act[j]) ? A[tri(i, j)] : T(0);
            for (int k = 0; k < j; ++k) t -= L[tri(i, k)] * L[tri(j, k)];
            L[tri(i, j)] = t / djj;
        }
    }
    return true;
}

// Solve L L^T x = b (forward then back substitution).
template <typename T, int P>
GP_HD void cholesky_solve(const T* L, const T* b, T* out) {
    T z[P];
    for (int i = 0; i < P; ++i) {
        T t = b[i];
        for (int k = 0; k < i; ++k) t -= L[tri(i, k)] * z[k];
        z[i] = t / L[tri(i, i)];
    }
    for (int i = P - 1; i >= 0; --i) {
        T t = z[i];
        for (int k = i + 1; k < P; ++k) t -= L[tri(k, i)] * out[k];
        out[i] = t / L[tri(i, i)];
    }
}

// diag(M^-1)_k = || L^-1 e_k ||^2.
template <typename T, int P>
GP_HD void inverse_diagonal(const T* L, T* out) {
    for (int k = 0; k < P; ++k) {
        T z[P];
        T acc = T(0);
        for (int i = 0; i < P; ++i) {
            T t = (i == k) ? T(1) : T(0);
            for (int m = 0; m < i; ++m) t -= L[tri(i, m)] * z[m];
            z[i] = t / L[tri(i, i)];
            acc += z[i] * z[i];
        }
        out[k] = acc;
    }
}

template <typename T, class Model>
GP_HD void fit_voxel(long long v, const T* __restrict__ y, const T* __restrict__ w,
                     int w_per_voxel, const T* __restrict__ x, const T* __restrict__ c,
                     const T* __restrict__ p0, const T* __restrict__ lower,
                     const T* __restrict__ upper, int p0_per_voxel, int bounds_per_voxel,
                     unsigned int fixed_mask, int n_samples,
                     long long n_vox, int max_iter, T xtol, T ftol, T lambda0, T lambda_min,
                     T lambda_max, T accept_tol, T* __restrict__ params, T* __restrict__ stderr_out,
                     T* __restrict__ chi2_out, int* __restrict__ n_iter_out,
                     signed char* __restrict__ status_out) {
    constexpr int P = Model::NP;
    constexpr int NT = P * (P + 1) / 2;
    T p[P], lo[P], hi[P];
    bool fixed[P];
    bool ok = true;
    int n_free = 0;
    for (int k = 0; k < P; ++k) {
        fixed[k] = ((fixed_mask >> k) & 1u) != 0u;
        const long long kv = (long long)k * n_vox + v;
        lo[k] = bounds_per_voxel ? lower[kv] : lower[k];
        hi[k] = bounds_per_voxel ? upper[kv] : upper[k];
        p[k] = p0_per_voxel ? p0[kv] : p0[k];
        ok = ok && gp_isfinite(p[k]);
        if (!fixed[k]) {
            p[k] = clamp(p[k], lo[k], hi[k]);
            ++n_free;
        }
    }
    for (int n = 0; n < n_samples; ++n) {
        const T yn = y[(long long)n * n_vox + v];
        const T wn = w == nullptr ? T(1) : (w_per_voxel ? w[(long long)n * n_vox + v] : w[n]);
        ok = ok && gp_isfinite(yn) && gp_isfinite(wn) && wn >= T(0);
    }
    T chi2 = T(0), noise = T(0), A[NT], g[P];
    if (ok)
        ok = accumulate<T, Model>(p, y, w, w_per_voxel, x, c, n_samples, n_vox, v, chi2, noise,
                                  A, g);
    if (!ok) {
        for (int k = 0; k < P; ++k) {
            params[(long long)k * n_vox + v] = gp_nan<T>();
            stderr_out[(long long)k * n_vox + v] = gp_nan<T>();
        }
        chi2_out[v] = gp_nan<T>();
        n_iter_out[v] = 0;
        status_out[v] = (signed char)FAILED;
        return;
    }

    T lambda = lambda0;
    bool converged = false, failed = false;
    int it = 0;
    while (it < max_iter) {
        bool act[P];
        for (int k = 0; k < P; ++k) {
            const bool out_low = p[k] <= lo[k] && g[k] < T(0);
            const bool out_high = p[k] >= hi[k] && g[k] > T(0);
            act[k] = !fixed[k] && !out_low && !out_high;
            if (act[k] && !(A[tri(k, k)] > T(0))) failed = true;
        }
        if (failed) break;
        ++it;
        T L[NT], delta[P];
        if (!cholesky<T, P>(A, act, lambda, L)) {
            lambda = lambda * T(10);
            if (lambda > lambda_max) {
                converged = true;
                break;
            }
            continue;
        }
        cholesky_solve<T, P>(L, g, delta);
        T pn[P];
        for (int k = 0; k < P; ++k) pn[k] = act[k] ? clamp(p[k] + delta[k], lo[k], hi[k]) : p[k];
        T chi2n, noisen, An[NT], gn[P];
        const bool fin = accumulate<T, Model>(pn, y, w, w_per_voxel, x, c, n_samples, n_vox, v,
                                              chi2n, noisen, An, gn);
        if (fin && chi2n <= chi2 + accept_tol * (noise + noisen)) {
            T pred = T(0);
            bool small_x = true;
            for (int k = 0; k < P; ++k) {
                if (act[k]) pred += delta[k] * g[k] + lambda * A[tri(k, k)] * delta[k] * delta[k];
                if (!fixed[k]) {
                    const T dp = pn[k] - p[k];
                    small_x = small_x && gp_abs(dp) <= xtol * (gp_abs(pn[k]) + xtol);
                }
            }
            const T dchi = chi2 - chi2n;
            const bool small_f = dchi <= ftol * chi2 && pred <= ftol * chi2;
            for (int k = 0; k < P; ++k) {
                p[k] = pn[k];
                g[k] = gn[k];
            }
            for (int k = 0; k < NT; ++k) A[k] = An[k];
            chi2 = chi2n;
            noise = noisen;
            lambda = gp_max(lambda / T(10), lambda_min);
            if (small_x || small_f) {
                converged = true;
                break;
            }
        } else {
            lambda = lambda * T(10);
            if (lambda > lambda_max) {
                converged = true;
                break;
            }
        }
    }

    // Standard errors from the undamped J^T W J over the free parameters.
    T se[P];
    bool free_[P];
    for (int k = 0; k < P; ++k) free_[k] = !fixed[k];
    T L[NT];
    const int dof = n_samples - n_free;
    if (!failed && dof > 0 && cholesky<T, P>(A, free_, T(0), L)) {
        T dinv[P];
        inverse_diagonal<T, P>(L, dinv);
        const T scale = chi2 / T(dof);
        for (int k = 0; k < P; ++k) se[k] = fixed[k] ? T(0) : gp_sqrt(dinv[k] * scale);
    } else {
        for (int k = 0; k < P; ++k) se[k] = fixed[k] ? T(0) : gp_nan<T>();
    }
    for (int k = 0; k < P; ++k) {
        params[(long long)k * n_vox + v] = p[k];
        stderr_out[(long long)k * n_vox + v] = se[k];
    }
    chi2_out[v] = chi2;
    n_iter_out[v] = it;
    status_out[v] = (signed char)(failed ? FAILED : (converged ? CONVERGED : MAX_ITER));
}

}  // namespace gp_lm

// Thin entry point: one thread per voxel, all iterations in this one launch.
template <typename T, class Model>
__global__ void lm_fit(const T* __restrict__ y, const T* __restrict__ w, int w_per_voxel,
                       const T* __restrict__ x, const T* __restrict__ c,
                       const T* __restrict__ p0, const T* __restrict__ lower,
                       const T* __restrict__ upper, int p0_per_voxel, int bounds_per_voxel,
                       unsigned int fixed_mask, int n_samples,
                       long long n_vox, int max_iter, T xtol, T ftol, T lambda0, T lambda_min,
                       T lambda_max, T accept_tol, T* __restrict__ params, T* __restrict__ stderr_out,
                       T* __restrict__ chi2_out, int* __restrict__ n_iter_out,
                       signed char* __restrict__ status_out) {
    const long long v = GP_GLOBAL_INDEX;
    if (v >= n_vox) return;
    gp_lm::fit_voxel<T, Model>(v, y, w, w_per_voxel, x, c, p0, lower, upper, p0_per_voxel,
                               bounds_per_voxel, fixed_mask,
                               n_samples, n_vox, max_iter, xtol, ftol, lambda0, lambda_min,
                               lambda_max, accept_tol, params, stderr_out, chi2_out, n_iter_out, status_out);
}
