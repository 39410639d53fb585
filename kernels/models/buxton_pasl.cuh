// Buxton general kinetic model, PASL tissue compartment with a QUIPSS II / Q2TIPS bolus of
// duration tau = TI1 (Buxton et al., MRM 40:383, 1998). NumPy twin: gpuperf/fit/models/buxton.py
// (BuxtonPASL); tests hold the two together.
//   p = (CBF [ml/100g/min], ATT [s])
//   x = (t = TI [s], tau = TI1 [s])
//   c = (T1 tissue [s], T1 blood [s], lambda [ml/g], alpha effective)
// With k = 1/T1b - 1/T1app and F(d) = (e^{kd} - 1)/k = d phi(kd):
//   during the bolus  dM/M0 = 2 alpha (f/lambda) e^{-t/T1b} F(t - ATT)
//   after it          dM/M0 = 2 alpha (f/lambda) e^{-t/T1b} e^{k(t - ATT - tau)} F(tau)
#pragma once
#include "common.cuh"

// phi(z) = (e^z - 1)/z and phi'(z) = (e^z (z - 1) + 1)/z^2; Taylor series for |z| < 0.5, where
// the direct forms cancel (the same split as _phi in the NumPy twin).
template <typename T>
GP_HD inline void gp_asl_phi(T z, T& phi, T& dphi) {
    if (gp_abs(z) < T(0.5)) {
        phi = T(1) + z * (T(1) / T(2) + z * (T(1) / T(6) + z * (T(1) / T(24) + z * (
                  T(1) / T(120) + z * (T(1) / T(720) + z * (T(1) / T(5040) + z * (
                  T(1) / T(40320) + z / T(362880))))))));
        dphi = T(1) / T(2) + z * (T(2) / T(6) + z * (T(3) / T(24) + z * (T(4) / T(120) + z * (
                   T(5) / T(720) + z * (T(6) / T(5040) + z * (T(7) / T(40320) + z * T(8) /
                   T(362880)))))));
    } else {
        const T ez = gp_exp(z);
        phi = (ez - T(1)) / z;
        dphi = (ez * (z - T(1)) + T(1)) / (z * z);
    }
}

struct BuxtonPASL {
    static constexpr int NP = 2, NX = 2, NC = 4;

    template <typename T>
    GP_HD static void eval(const T* p, const T* x, const T* c, T& f, T* dfdp) {
        const T t1t = c[0], t1b = c[1], lam = c[2], alpha = c[3];
        const T fl = p[0] / T(6000);
        const T t = x[0], tau = x[1];
        const T s = T(2) * alpha / lam;
        const T k = (T(1) / t1b - T(1) / t1t) - fl / lam;
        const T d = t - p[1];
        f = T(0);
        dfdp[0] = T(0);
        dfdp[1] = T(0);
        if (d < T(0)) return;                   // label has not arrived yet
        const T b = gp_exp(-t / t1b);
        if (d < tau) {
            T phi, dphi;
            gp_asl_phi<T>(k * d, phi, dphi);
            const T big_f = d * phi;
            f = s * fl * b * big_f;
            dfdp[1] = -s * fl * b * gp_exp(k * d);
            dfdp[0] = s * b * (big_f - (fl / lam) * d * d * dphi) / T(6000);
        } else {
            T phi, dphi;
            gp_asl_phi<T>(k * tau, phi, dphi);
            const T f_tau = tau * phi;
            const T da = d - tau;
            const T eda = gp_exp(k * da);
            f = s * fl * b * eda * f_tau;
            dfdp[1] = -k * f;
            dfdp[0] = s * b * (eda * f_tau - (fl / lam) * (da * eda * f_tau + eda * tau * tau *
                                                            dphi)) / T(6000);
        }
    }
};
