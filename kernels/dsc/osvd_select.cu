// oSVD threshold selection, one thread per voxel (per-voxel math: dsc/osvd_select.cuh).
//
// Layout (docs/ARCHITECTURE.md): coef is time-major (n_coef, V), coef[j * V + v], so the
// threads of a warp read consecutive addresses; basis (n_coef, n_pad) and set_rows (n_sets)
// are shared by all voxels. Outputs are (V,).
#include "common.cuh"
#include "dsc/osvd_select.cuh"

template <typename T>
__global__ void osvd_select(const T* __restrict__ coef, const T* __restrict__ basis,
                            const int* __restrict__ set_rows, int n_sets, int n_pad,
                            int n_frames, long long n_vox, T oi_limit, int* __restrict__ set_index,
                            T* __restrict__ oi, T* __restrict__ rmax, int* __restrict__ tmax_index) {
    const long long v = GP_GLOBAL_INDEX;
    if (v >= n_vox) return;
    gp_osvd::select_voxel<T>(coef + v, n_vox, basis, set_rows, n_sets, n_pad, n_frames, oi_limit,
                             set_index[v], oi[v], rmax[v], tmax_index[v]);
}
