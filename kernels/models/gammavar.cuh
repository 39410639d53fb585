// Gamma-variate bolus f(t) = A * s^a * exp(-s / b), s = t - t0, and f = 0 for t <= t0.
//
// Thompson et al., Circ Res 1964 (indicator-dilution curves); used for DSC first-pass fits
// (Benner et al., MRM 1997). Parameters p = (A, t0, a, b): A in signal units, t0 and b in
// the units of x, a dimensionless. Peak at s = a*b; first moment (MTT) at (a + 1)*b.
//
// Numerics: s^a e^{-s/b} is evaluated as exp(a ln s - s/b) so neither factor overflows on
// its own; df/dt0 = f/b - A a s^(a-1) e^{-s/b} uses the same exponential form, which is
// finite for every s > 0 (s^(a-1) alone would overflow as s -> 0 for a < 1).
// For t <= t0 the value and every derivative are exactly zero (one-sided at s = 0).
// NumPy twin: gpuperf/fit/models/gammavar.py.
#pragma once
#include "common.cuh"

struct GammaVar {
    static constexpr int NP = 4, NX = 1, NC = 0;

    template <typename T>
    GP_HD static void eval(const T* p, const T* x, const T* /*c*/, T& f, T* dfdp) {
        const T s = x[0] - p[1];
        if (!(s > T(0))) {
            f = T(0);
            dfdp[0] = T(0);
            dfdp[1] = T(0);
            dfdp[2] = T(0);
            dfdp[3] = T(0);
            return;
        }
        const T amp = p[0], a = p[2], b = p[3];
        const T ls = gp_log(s);
        const T e = gp_exp(a * ls - s / b);   // s^a e^{-s/b}
        f = amp * e;
        dfdp[0] = e;
        dfdp[1] = f / b - amp * a * gp_exp((a - T(1)) * ls - s / b);
        dfdp[2] = f * ls;
        dfdp[3] = f * s / (b * b);
    }
};
