// Constants and warp primitives of the sampled estimators' CUDA kernels (banzhaf_cells_cuda.cu,
// banzhaf_value_cuda.cu); banzhaf_launch_cuda.cu has the design.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "banzhaf/banzhaf_args.h"
#include "banzhaf/banzhaf_warp_side.h"

namespace hbi {
namespace banzhaf_cuda {

constexpr int kWarp = 32;
using banzhaf::kMaxExactPlayers;
constexpr int kValueThreads = 128;  // coalitions per round of the value kernel
constexpr unsigned kFull = 0xffffffffu;

// ------------------------------------------------------------------------------------------------
// Device helpers

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  // Butterfly: every lane ends with the same value (each step adds the same two operands).
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}
template <typename T>
__device__ __forceinline__ T warp_max(T x) {
  for (int o = 16; o > 0; o >>= 1) x = mx(x, __shfl_xor_sync(kFull, x, o));
  return x;
}

// The lane policy of banzhaf_warp_side.h / banzhaf_warp_game.h on the GPU: the warp's 32 lanes.
// (__host__ __device__ as the code that calls it; only device code instantiates it.)
struct CudaLane {
  static constexpr int width = kWarp;
  template <typename T>
  __host__ __device__ static T sum(T x) {
#ifdef __CUDA_ARCH__
    return warp_sum(x);
#else
    return x;
#endif
  }
  template <typename T>
  __host__ __device__ static T max(T x) {
#ifdef __CUDA_ARCH__
    return warp_max(x);
#else
    return x;
#endif
  }
  __host__ __device__ static int min(int x) {
#ifdef __CUDA_ARCH__
    for (int o = 16; o > 0; o >>= 1) x = ::min(x, __shfl_xor_sync(kFull, x, o));
#endif
    return x;
  }
  __host__ __device__ static void sync() {
#ifdef __CUDA_ARCH__
    __syncwarp();
#endif
  }
  // Into shared memory, from many lanes and warps at once.
  template <typename T>
  __host__ __device__ static void add(T* sink, T x) {
#ifdef __CUDA_ARCH__
    atomicAdd(sink, x);
#else
    *sink += x;
#endif
  }
};

}  // namespace banzhaf_cuda
}  // namespace hbi
