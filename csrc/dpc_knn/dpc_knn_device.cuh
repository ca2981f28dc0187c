// Launch constants and device helpers of the dpc_knn CUDA kernels (dpc_knn_cuda.cu describes the design).
#pragma once
#include <cstdint>

namespace hbi {
namespace dpc {

constexpr int kWarp = 32;
constexpr int64_t kSmallN = 64;     // fused one-block-per-sample path up to this N
constexpr int kSmallThreads = 512;  // 64 groups of 8 lanes
constexpr int kTile = 32;           // distance tile (tokens per side)
constexpr int kRowThreads = 256;    // row kernels
constexpr int64_t kWorkspaceBytes = int64_t{1} << 31;

template <typename acc_t>
struct Bits;
template <>
struct Bits<float> {
  using type = unsigned int;
  __device__ static type of(float v) { return __float_as_uint(v); }
  __device__ static float value(type b) { return __uint_as_float(b); }
};
template <>
struct Bits<double> {
  using type = unsigned long long;
  __device__ static type of(double v) { return static_cast<type>(__double_as_longlong(v)); }
  __device__ static double value(type b) { return __longlong_as_double(static_cast<long long>(b)); }
};

// max of non-negative values through their bits (NaN skipped, as std::max(m, NaN) keeps m on the CPU).
__device__ __forceinline__ void atomic_max_nonnegative(float* address, float v) {
  if (!(v > 0.0f)) return;
  atomicMax(reinterpret_cast<unsigned int*>(address), __float_as_uint(v));
}
__device__ __forceinline__ void atomic_max_nonnegative(double* address, double v) {
  if (!(v > 0.0)) return;
  atomicMax(reinterpret_cast<unsigned long long*>(address), static_cast<unsigned long long>(__double_as_longlong(v)));
}

}  // namespace dpc
}  // namespace hbi
