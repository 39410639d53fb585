// Buxton (p)CASL tissue compartment plus a macrovascular (arterial blood) box component
// (Chappell et al., MRM 63:1357, 2010). NumPy twin: gpuperf/fit/models/buxton.py
// (BuxtonPCASLArterial).
//   p = (CBF [ml/100g/min], ATT [s], aBV [%], aBAT [s]);  x, c as BuxtonPCASL.
#pragma once
#include "models/buxton_pcasl.cuh"  // via the kernel folder on the include path (NVRTC too)

struct BuxtonPCASLArterial {
    static constexpr int NP = 4, NX = 2, NC = 4;

    template <typename T>
    GP_HD static void eval(const T* p, const T* x, const T* c, T& f, T* dfdp) {
        gp_buxton_pcasl_tissue<T>(p[0], p[1], x[0], x[1], c, f, dfdp[0], dfdp[1]);
        const T t = x[0], tau = x[1], abat = p[3];
        dfdp[2] = T(0);
        dfdp[3] = T(0);
        if (t >= abat && t < abat + tau) {      // labelled blood still in the arteries
            const T unit = T(2) * c[3] / c[2] * gp_exp(-abat / c[1]);
            const T abv = p[2] / T(100);
            f += abv * unit;
            dfdp[2] = unit / T(100);
            dfdp[3] = -abv * unit / c[1];       // the box edges carry no gradient
        }
    }
};
