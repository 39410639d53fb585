// Mono-exponential decay f(t) = S0 * exp(-R * t).
//
// Parameters p = (S0, R): S0 in signal units, R in 1/[x] (e.g. R2* in 1/s when t is in s).
// The rate form (rather than exp(-t/T)) keeps the model finite at R = 0 and makes the
// Jacobian better conditioned. NumPy twin: gpuperf/fit/models/monoexp.py.
#pragma once
#include "common.cuh"

struct MonoExp {
    static constexpr int NP = 2, NX = 1, NC = 0;

    template <typename T>
    GP_HD static void eval(const T* p, const T* x, const T* /*c*/, T& f, T* dfdp) {
        const T e = gp_exp(-p[1] * x[0]);
        f = p[0] * e;
        dfdp[0] = e;
        dfdp[1] = -x[0] * f;
    }
};
