// Buxton general kinetic model, (p)CASL tissue compartment (Buxton et al., MRM 40:383, 1998).
// NumPy twin: gpuperf/fit/models/buxton.py (BuxtonPCASL); tests hold the two together.
//
// Signal is dM/M0 (voxel M0; M0b = M0/lambda enters as the 1/lambda factor), so all constants
// are shared by every voxel.
//   p = (CBF [ml/100g/min], ATT [s])
//   x = (t = tau + PLD [s], tau [s])        -- t counts from the START of labelling
//   c = (T1 tissue [s], T1 blood [s], lambda [ml/g], alpha effective)
#pragma once
#include "common.cuh"

// Tissue compartment value and derivatives d/dCBF, d/dATT (shared with the arterial variant).
template <typename T>
GP_HD inline void gp_buxton_pcasl_tissue(T cbf, T att, T t, T tau, const T* c, T& f, T& d_cbf,
                                         T& d_att) {
    const T t1t = c[0], t1b = c[1], lam = c[2], alpha = c[3];
    const T fl = cbf / T(6000);                 // ml/g/s
    const T s = T(2) * alpha / lam;              // 2 alpha M0b / M0
    const T tapp = T(1) / (T(1) / t1t + fl / lam);
    const T dtapp_df = -tapp * tapp / lam;
    const T d = t - att;
    f = T(0);
    d_cbf = T(0);
    d_att = T(0);
    if (d < T(0)) return;                       // label has not arrived yet
    const T e_att = gp_exp(-att / t1b);
    if (d < tau) {                              // bolus still arriving
        const T u = gp_exp(-d / tapp);
        const T one_u = T(1) - u;
        f = s * fl * tapp * e_att * one_u;
        d_att = s * fl * e_att * (-(tapp / t1b) * one_u - u);
        d_cbf = s * e_att * (tapp * one_u + fl * dtapp_df * (one_u - u * d / tapp)) / T(6000);
    } else {                                    // whole bolus delivered, decaying with T1app
        const T da = d - tau;
        const T v = gp_exp(-da / tapp);
        const T w = gp_exp(-tau / tapp);
        const T h = tapp * v * (T(1) - w);
        f = s * fl * e_att * h;
        d_att = f * (T(1) / tapp - T(1) / t1b);
        const T dh = v * (T(1) - w) * (T(1) + da / tapp) - v * w * tau / tapp;
        d_cbf = s * e_att * (h + fl * dtapp_df * dh) / T(6000);
    }
}

struct BuxtonPCASL {
    static constexpr int NP = 2, NX = 2, NC = 4;

    template <typename T>
    GP_HD static void eval(const T* p, const T* x, const T* c, T& f, T* dfdp) {
        gp_buxton_pcasl_tissue<T>(p[0], p[1], x[0], x[1], c, f, dfdp[0], dfdp[1]);
    }
};
