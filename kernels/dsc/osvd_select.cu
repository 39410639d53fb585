// oSVD threshold selection, one thread per voxel (per-voxel math: dsc/osvd_select.cuh).
//
// Layout (docs/ARCHITECTURE.md): coef is time-major (n_coef, V), coef[j * V + v], so the
// threads of a warp read consecutive addresses. Several oSVD plans (one per AIF: the subjects
// of a batch) may share a launch: voxel v uses plan p = plan_index[v], i.e. the basis
// (n_coef, n_pad) at basis + p * basis_stride, the set_rows at set_rows + p * sets_stride and
// n_sets[p] sets (coefficient rows past a plan's own count are never read). Outputs are (V,).
#include "common.cuh"
#include "dsc/osvd_select.cuh"

template <typename T>
__global__ void osvd_select(const T* __restrict__ coef, const T* __restrict__ basis,
                            const int* __restrict__ set_rows, const int* __restrict__ n_sets,
                            const int* __restrict__ plan_index, long long basis_stride,
                            int sets_stride, int n_pad, int n_frames, long long n_vox, T oi_limit,
                            int* __restrict__ set_index, T* __restrict__ oi, T* __restrict__ rmax,
                            int* __restrict__ tmax_index) {
    const long long v = GP_GLOBAL_INDEX;
    if (v >= n_vox) return;
    const int p = plan_index[v];
    gp_osvd::select_voxel<T>(coef + v, n_vox, basis + (long long)p * basis_stride,
                             set_rows + (long long)p * sets_stride, n_sets[p], n_pad, n_frames,
                             oi_limit, set_index[v], oi[v], rmax[v], tmax_index[v]);
}
