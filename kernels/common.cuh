// Shared definitions for gpuperf kernels; builds with nvcc, NVRTC (CuPy) and g++ (host tests).
//
// Math helpers are overloaded for float and double so that float code never promotes to
// double by accident (a double literal or a call to exp() on a float in device code emits
// .f64 instructions; tests/test_cuda_compile.py lints the PTX for them).
#pragma once

// NVRTC (CuPy) defines __CUDACC_RTC__; test both so the shim never reaches a device build.
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include "host_shim.h"
#endif

#if !defined(__CUDACC_RTC__)
#include <math.h>
#endif

#define GP_HD __host__ __device__
#define GP_INLINE __host__ __device__ __forceinline__

// Flat 1-D global thread index (64-bit so that V > 2^31 voxels cannot overflow).
#define GP_GLOBAL_INDEX \
    ((long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x)

GP_INLINE float gp_exp(float v) { return expf(v); }
GP_INLINE double gp_exp(double v) { return exp(v); }
GP_INLINE float gp_log(float v) { return logf(v); }
GP_INLINE double gp_log(double v) { return log(v); }
GP_INLINE float gp_sqrt(float v) { return sqrtf(v); }
GP_INLINE double gp_sqrt(double v) { return sqrt(v); }
GP_INLINE float gp_pow(float b, float e) { return powf(b, e); }
GP_INLINE double gp_pow(double b, double e) { return pow(b, e); }
GP_INLINE float gp_abs(float v) { return fabsf(v); }
GP_INLINE double gp_abs(double v) { return fabs(v); }

template <typename T>
GP_INLINE T gp_min(T a, T b) { return b < a ? b : a; }
template <typename T>
GP_INLINE T gp_max(T a, T b) { return a < b ? b : a; }

// True for finite values; NaN and +-inf give NaN for v - v. Written without isfinite() so it
// behaves identically under nvcc, NVRTC and g++ (and never promotes to double).
template <typename T>
GP_INLINE bool gp_isfinite(T v) { return (v - v) == T(0); }

// Quiet NaN of type T without <limits> (unavailable under NVRTC).
template <typename T>
GP_INLINE T gp_nan() { return T(0) / T(0); }
