// Buxton models with a per-voxel time offset: 2D readouts read slice k SliceTiming[k] after
// the start of the volume, so every sample of a voxel in that slice is taken at t + dt
// (effective PLD = PLD + SliceTiming[k]; PASL: TI + SliceTiming[k]).
// NumPy twin: gpuperf/fit/models/buxton.py (SliceTimed); tests hold the two together.
//
//   p = (<parameters of the base model>, dt [s])   -- dt is data, not a fitted parameter:
//       callers hold it fixed (fit_lm fixed=...); its Jacobian column is 0, so a fit that
//       leaves it free is FAILED (a parameter without influence), never silently wrong.
//   x, c as the base model.
// One kernel launch fits every slice of a subject: the offset travels with the voxel (p0).
#pragma once
#include "models/buxton_pasl.cuh"             // via the kernel folder on the include path
#include "models/buxton_pcasl_arterial.cuh"   // (includes buxton_pcasl.cuh)

template <class Base>
struct GpSliceTimed {
    static constexpr int NP = Base::NP + 1, NX = Base::NX, NC = Base::NC;

    template <typename T>
    GP_HD static void eval(const T* p, const T* x, const T* c, T& f, T* dfdp) {
        T xs[Base::NX];
        xs[0] = x[0] + p[Base::NP];                 // t of this voxel's slice
        for (int i = 1; i < Base::NX; ++i) xs[i] = x[i];
        Base::template eval<T>(p, xs, c, f, dfdp);
        dfdp[Base::NP] = T(0);
    }
};

struct BuxtonPCASLSliced : GpSliceTimed<BuxtonPCASL> {};
struct BuxtonPASLSliced : GpSliceTimed<BuxtonPASL> {};
struct BuxtonPCASLArterialSliced : GpSliceTimed<BuxtonPCASLArterial> {};
