// DSC tissue curve with a gamma distribution of capillary transit times (model-based
// deconvolution; Mouridsen et al., JCBFM 34:1511, 2014; Jespersen & Ostergaard, JCBFM 32:264,
// 2012). NumPy twin: gpuperf/fit/models/dsc_gamma_residue.py; tests hold the two together.
//
//   f(t) = F * (C_a conv R)(t - delay),  R(s) = 1 - GammaCDF(s; a, MTT/a) = Q(a, a s / MTT)
//
// p = (F [1/s, = (rho/kH) CBF/6000], MTT [s], a (shape, CTH = MTT/sqrt(a)), delay [s]);
// x = (t [s]); c = (t0, h, M, dq, J, C[0..M-1], A[0..M-1]).
//
// The AIF is continuous: C(t) is linear between the nodes t0 + j h of a fine table (the caller
// fills it from a gamma-variate first pass plus the interpolated remainder, or any other
// continuous representation), 0 before t0 and constant after the last node. A(t) = int_t0^t C
// is its exact integral (piecewise quadratic), so dA/dt = C everywhere.
//
// The convolution is an expectation over the transit time u ~ Gamma(a, MTT/a) (integrate
// C_a conv R by parts: C_a conv R = A - A conv h):
//   (C_a conv R)(tau) = E_u[A(tau) - A(tau - u)] = int h(u) [A(tau) - A(tau - u)] du,
// integrated on the fine grid u = MTT q_j, q_j = (j + 1/2) dq, j < J, with weights
// k_j = q_j^(a-1) e^(-a (q_j - 1)) (the gamma density of q = u/MTT up to a constant) normalised
// by their sum, so the discrete transit-time distribution has mass 1 exactly whatever a. Every
// derivative is the exact derivative of that discrete sum:
//   df/dF = conv,  df/dMTT = F sum k q C(tau - MTT q) / K,
//   df/da = F (sum k g D / K - conv sum k g / K),  g = ln q - q + 1,
//   df/ddelay = -F sum k (C(tau) - C(tau - MTT q)) / K.
// Shapes a >= 1 keep the density finite at q = 0 (bound a below by 1).
#pragma once
#include "common.cuh"

namespace gp_dscres {

// C(u) and A(u) of the continuous AIF table (see the header comment).
template <typename T>
GP_INLINE void aif_at(T u, const T* c, T& ca, T& ia) {
    const T t0 = c[0], h = c[1];
    const int m = (int)c[2];
    const T* tc = c + 5;
    const T* ta = c + 5 + m;
    const T s = (u - t0) / h;
    if (!(s > T(0))) {
        ca = T(0);
        ia = T(0);
        return;
    }
    if (s >= T(m - 1)) {
        ca = tc[m - 1];
        ia = ta[m - 1] + (u - (t0 + T(m - 1) * h)) * ca;
        return;
    }
    const int i = (int)s;
    const T fr = s - T(i);
    const T dc = tc[i + 1] - tc[i];
    ca = tc[i] + fr * dc;
    ia = ta[i] + h * fr * (tc[i] + T(0.5) * fr * dc);
}

}  // namespace gp_dscres

struct DSCGammaResidue {
    static constexpr int NP = 4, NX = 1, NC = 5;

    template <typename T>
    GP_HD static void eval(const T* p, const T* x, const T* c, T& f, T* dfdp) {
        const T flow = p[0], mtt = p[1], a = p[2], delay = p[3];
        const T dq = c[3];
        const int nq = (int)c[4];
        const T tau = x[0] - delay;
        T c_tau, a_tau;
        gp_dscres::aif_at<T>(tau, c, c_tau, a_tau);
        T sk = T(0), skd = T(0), skg = T(0), skgd = T(0), skqc = T(0), skc = T(0);
        for (int j = 0; j < nq; ++j) {
            const T q = (T(j) + T(0.5)) * dq;
            const T lq = gp_log(q);
            const T k = gp_exp((a - T(1)) * lq - a * (q - T(1)));
            const T g = lq - q + T(1);
            T cu, au;
            gp_dscres::aif_at<T>(tau - mtt * q, c, cu, au);
            const T d = a_tau - au;
            sk += k;
            skd += k * d;
            skg += k * g;
            skgd += k * g * d;
            skqc += k * q * cu;
            skc += k * cu;
        }
        const T conv = skd / sk;
        f = flow * conv;
        dfdp[0] = conv;
        dfdp[1] = flow * skqc / sk;
        dfdp[2] = flow * (skgd / sk - conv * (skg / sk));
        dfdp[3] = -flow * (c_tau - skc / sk);
    }
};
