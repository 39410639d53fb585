// Host (g++) stand-ins for the CUDA language extensions used by gpuperf kernels.
//
// Why: CI has no GPU, so tests compile the *same* kernel source as host C++ and run it through
// ctypes (gpuperf.cuda.host). Every `__global__` entry point becomes a plain function;
// gp_host_launch() loops over the grid and the block, setting thread-local threadIdx/blockIdx,
// so the kernel's own indexing is exercised exactly as on the device.
//
// Not supported on the host (a kernel using them fails to compile here, on purpose):
// __syncthreads, __shared__ memory, warp intrinsics, atomics. One thread per voxel kernels
// need none of them.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#error "host_shim.h is for host C++ builds only"
#endif

#include <cstddef>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// g++ understands __restrict__ natively.

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};

// Thread-local so that blocks can be run on several host threads at once.
inline thread_local dim3 threadIdx(0, 0, 0);
inline thread_local dim3 blockIdx(0, 0, 0);
inline thread_local dim3 blockDim(1, 1, 1);
inline thread_local dim3 gridDim(1, 1, 1);

// Run kernel(args...) for every (block, thread) of a 3-D grid, in CUDA's index order.
// Blocks are distributed round-robin over n_threads host threads (n_threads <= 1: serial).
template <class Kernel, class... Args>
void gp_host_launch(dim3 grid, dim3 block, int n_threads, Kernel kernel, Args... args) {
    const unsigned long long n_blocks =
        (unsigned long long)grid.x * (unsigned long long)grid.y * (unsigned long long)grid.z;
    auto worker = [=](unsigned long long first, unsigned long long stride) {
        gridDim = grid;
        blockDim = block;
        for (unsigned long long b = first; b < n_blocks; b += stride) {
            blockIdx = dim3((unsigned int)(b % grid.x), (unsigned int)((b / grid.x) % grid.y),
                            (unsigned int)(b / ((unsigned long long)grid.x * grid.y)));
            for (unsigned int tz = 0; tz < block.z; ++tz)
                for (unsigned int ty = 0; ty < block.y; ++ty)
                    for (unsigned int tx = 0; tx < block.x; ++tx) {
                        threadIdx = dim3(tx, ty, tz);
                        kernel(args...);
                    }
        }
    };
    if (n_threads <= 1 || n_blocks <= 1) {
        worker(0, 1);
        return;
    }
    unsigned long long n = (unsigned long long)n_threads;
    if (n > n_blocks) n = n_blocks;
    std::vector<std::thread> pool;
    pool.reserve((size_t)n);
    for (unsigned long long i = 0; i < n; ++i) pool.emplace_back(worker, i, n);
    for (auto& t : pool) t.join();
}


// ---- Signature-driven launches (gpuperf.cuda.signature, gpuperf.cuda.host) ------------------
// A kernel is launched the way cuLaunchKernel (and so CuPy) launches it: an array of pointers,
// one per parameter, each read with the width of the kernel's own parameter type. The host
// library also exports each kernel's parameter types as text, derived by the compiler from the
// kernel's function type, so Python never restates a parameter list by hand.
template <class T>
struct gp_type_name_of;  // no definition: an unsupported parameter type fails to compile
#define GP_TYPE_NAME(T, S) \
    template <>            \
    struct gp_type_name_of<T> { static const char* get() { return S; } };
GP_TYPE_NAME(float, "float")
GP_TYPE_NAME(double, "double")
GP_TYPE_NAME(bool, "bool")
GP_TYPE_NAME(char, "char")
GP_TYPE_NAME(signed char, "signed char")
GP_TYPE_NAME(unsigned char, "unsigned char")
GP_TYPE_NAME(short, "short")
GP_TYPE_NAME(unsigned short, "unsigned short")
GP_TYPE_NAME(int, "int")
GP_TYPE_NAME(unsigned int, "unsigned int")
GP_TYPE_NAME(long long, "long long")
GP_TYPE_NAME(unsigned long long, "unsigned long long")
#undef GP_TYPE_NAME

template <class T>
std::string gp_param_type() {
    if constexpr (std::is_pointer_v<T>) {
        using U = std::remove_pointer_t<T>;
        return std::string(std::is_const_v<U> ? "const " : "") +
               gp_param_type<std::remove_cv_t<U>>() + "*";
    } else {
        return gp_type_name_of<std::remove_cv_t<T>>::get();
    }
}

// "const float*;int;long long;float*;" for void k(const float*, int, long long, float*).
template <class... P>
const char* gp_signature(void (*)(P...)) {
    static const std::string text = [] {
        std::string r;
        ((r += gp_param_type<P>() + ";"), ...);
        return r;
    }();
    return text.c_str();
}

template <class... P, std::size_t... I>
void gp_host_launch_packed_(dim3 grid, dim3 block, int n_threads, void (*kernel)(P...),
                            void** args, std::index_sequence<I...>) {
    gp_host_launch(grid, block, n_threads, kernel,
                   *static_cast<std::remove_cv_t<P>*>(args[I])...);
}

// Launch with kernelParams-style arguments: args[i] points at the value of parameter i.
template <class... P>
void gp_host_launch_packed(dim3 grid, dim3 block, int n_threads, void (*kernel)(P...),
                           void** args) {
    gp_host_launch_packed_(grid, block, n_threads, kernel, args, std::index_sequence_for<P...>{});
}
