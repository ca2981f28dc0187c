// The sparse backward kernels of wti_similarity: one side (texts or videos) per launch, then the fixed-order
// sum over D slices (wti_cuda.cu describes the design).
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "wti/wti_device.cuh"

namespace hbi {
namespace wti {

// ---------------------------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------------------------

namespace bwd {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;
constexpr int kRowsPerWarp = 16;
constexpr int kRows = kWarps * kRowsPerWarp;  // own rows per block (128)
constexpr int kVec = 2;                       // columns per lane
constexpr int kCols = kWarp * kVec;           // D slice per block (64)
constexpr size_t kSmemBudget = 40 * 1024;

template <typename scalar_t, typename acc_t, bool kVector>
__device__ __forceinline__ void load2(const scalar_t* src, int64_t d, int64_t D, acc_t out[kVec]) {
  if (kVector) {  // D even and an aligned base: both columns are inside (d < D, d even)
    if constexpr (std::is_same_v<scalar_t, at::Half>) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(src));
      out[0] = f.x;
      out[1] = f.y;
    } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(src));
      out[0] = f.x;
      out[1] = f.y;
#else
      out[0] = static_cast<acc_t>(src[0]);
      out[1] = static_cast<acc_t>(src[1]);
#endif
    } else if constexpr (std::is_same_v<scalar_t, float>) {
      const float2 f = *reinterpret_cast<const float2*>(src);
      out[0] = f.x;
      out[1] = f.y;
    } else {
      const double2 f = *reinterpret_cast<const double2*>(src);
      out[0] = f.x;
      out[1] = f.y;
    }
  } else {
    out[0] = static_cast<acc_t>(src[0]);
    out[1] = d + 1 < D ? static_cast<acc_t>(src[1]) : acc_t(0);
  }
}

// One side of the backward ("own" items n, rows r; "other" items m, rows l); pair (n, m) = n*ps_own + m*ps_oth.
//   own_idx[pair, r] : the other row of own row r (-1: none), oth_idx[pair, l] : the own row of other row l.
//   z[n,r] = sum_m c F_oth[m, own_idx],   w[n,r] = sum_{m, l: oth_idx = r} c w_oth[m,l] F_oth[m,l]
//   grad_own[n,r] = w_own[n,r] z + w,     partial[slice, n, r] = <F_own[n,r], z> over the block's columns.
// Grid (1-D): own groups x row chunks x D slices, slices fastest. A block: `items` own items x `chunk` rows
// each (<= kRows).
template <typename scalar_t, bool kVector>
__global__ void __launch_bounds__(kThreads)
    wti_backward_side_kernel(const at::opmath_type<scalar_t>* __restrict__ grad, const scalar_t* __restrict__ own,
                             const scalar_t* __restrict__ own_weight, const scalar_t* __restrict__ oth,
                             const scalar_t* __restrict__ oth_weight, const int32_t* __restrict__ own_idx,
                             const int32_t* __restrict__ oth_idx, int64_t n_own, int64_t n_oth, int L_own, int L_oth,
                             int64_t D, int64_t ps_own, int64_t ps_oth, int items, int chunk, int chunks, int batch,
                             int words, scalar_t* __restrict__ grad_own, at::opmath_type<scalar_t>* partial) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int R = items * chunk;
  acc_t* c_s = reinterpret_cast<acc_t*>(smem_raw);                    // [items][batch]
  int32_t* idx_s = reinterpret_cast<int32_t*>(c_s + items * batch);   // [batch][R]
  uint32_t* mask_s = reinterpret_cast<uint32_t*>(idx_s + batch * R);  // [batch][R][words]

  const int tid = threadIdx.x, warp = tid / kWarp, lane = tid % kWarp;
  // Blocks: D slices fastest, so the slices of one group run together and share its index reads in L2
  const int64_t slices = (D + kCols - 1) / kCols;
  const int64_t slice = blockIdx.x % slices, block = blockIdx.x / slices;
  const int64_t group = block / chunks;
  const int r0 = static_cast<int>(block % chunks) * chunk;  // first own row of the chunk
  const int64_t n0 = group * items;
  const int64_t d = slice * kCols + lane * kVec;
  const bool lane_active = d < D;

  acc_t z[kRowsPerWarp][kVec], w[kRowsPerWarp][kVec];
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k)
#pragma unroll
    for (int e = 0; e < kVec; ++e) z[k][e] = w[k][e] = acc_t(0);

  int c_row[kRowsPerWarp];  // offset of the row's own item in c_s (row / chunk is costly in the inner loop)
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k) c_row[k] = ((warp + k * kWarps) / chunk) * batch;

  for (int64_t m0 = 0; m0 < n_oth; m0 += batch) {
    const int in_batch = static_cast<int>(std::min<int64_t>(batch, n_oth - m0));
    __syncthreads();  // the previous batch is done with the staging area
    for (int i = tid; i < in_batch * R * words; i += kThreads) mask_s[i] = 0u;
    for (int i = tid; i < items * in_batch; i += kThreads) {
      const int item = i / in_batch, ml = i % in_batch;
      const int64_t n = n0 + item;
      c_s[item * batch + ml] = n < n_own ? grad[n * ps_own + (m0 + ml) * ps_oth] / 2 : acc_t(0);
    }
    for (int i = tid; i < in_batch * R; i += kThreads) {
      const int ml = i / R, row = i % R, item = row / chunk, r = r0 + row % chunk;
      const int64_t n = n0 + item;
      int32_t idx = -1;
      if (n < n_own && r < L_own) {
        idx = own_idx[(n * ps_own + (m0 + ml) * ps_oth) * L_own + r];
        if (idx >= L_oth) idx = -1;  // out of range: ignored (the op does not sync to validate)
      }
      idx_s[i] = idx;
    }
    __syncthreads();
    for (int64_t i = tid; i < int64_t{items} * in_batch * L_oth; i += kThreads) {
      const int l = static_cast<int>(i % L_oth);
      const int64_t rest = i / L_oth;
      const int ml = static_cast<int>(rest % in_batch), item = static_cast<int>(rest / in_batch);
      const int64_t n = n0 + item;
      if (n >= n_own) continue;
      const int32_t r = oth_idx[(n * ps_own + (m0 + ml) * ps_oth) * L_oth + l];
      if (r < r0 || r >= r0 + chunk || r >= L_own) continue;
      const int row = item * chunk + (r - r0);
      atomicOr(&mask_s[(static_cast<int64_t>(ml) * R + row) * words + (l >> 5)], 1u << (l & 31));
    }
    __syncthreads();

    for (int ml = 0; ml < in_batch; ++ml) {
      const int64_t m = m0 + ml;
      const scalar_t* oth_m = oth + m * L_oth * D + d;
#pragma unroll
      for (int k = 0; k < kRowsPerWarp; ++k) {
        const int row = warp + k * kWarps;
        if (row >= R) break;  // warp-uniform
        const acc_t c = c_s[c_row[k] + ml];
        if (c == acc_t(0)) continue;
        const int32_t idx = idx_s[ml * R + row];
        if (idx >= 0 && lane_active) {
          acc_t y[kVec];
          load2<scalar_t, acc_t, kVector>(oth_m + static_cast<int64_t>(idx) * D, d, D, y);
#pragma unroll
          for (int e = 0; e < kVec; ++e) z[k][e] += c * y[e];
        }
        const uint32_t* bits_row = mask_s + (static_cast<int64_t>(ml) * R + row) * words;
        for (int word = 0; word < words; ++word) {
          uint32_t bits = bits_row[word];
          while (bits) {  // warp-uniform: every lane reads the same word
            const int l = word * 32 + __ffs(bits) - 1;
            bits &= bits - 1;
            if (lane_active) {
              const acc_t coef = c * static_cast<acc_t>(oth_weight[m * L_oth + l]);
              acc_t y[kVec];
              load2<scalar_t, acc_t, kVector>(oth_m + static_cast<int64_t>(l) * D, d, D, y);
#pragma unroll
              for (int e = 0; e < kVec; ++e) w[k][e] += coef * y[e];
            }
          }
        }
      }
    }
  }

#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k) {
    const int row = warp + k * kWarps;
    if (row >= R) break;
    const int64_t n = n0 + row / chunk;
    const int r = r0 + row % chunk;
    if (n >= n_own || r >= L_own) continue;  // warp-uniform
    const int64_t own_row = n * L_own + r;
    acc_t dot = 0;
    if (lane_active) {
      const acc_t pw = static_cast<acc_t>(own_weight[own_row]);
      acc_t f[kVec];
      load2<scalar_t, acc_t, kVector>(own + own_row * D + d, d, D, f);
      scalar_t* out = grad_own + own_row * D + d;
      out[0] = static_cast<scalar_t>(pw * z[k][0] + w[k][0]);
      if (d + 1 < D) out[1] = static_cast<scalar_t>(pw * z[k][1] + w[k][1]);
      dot = f[0] * z[k][0] + (d + 1 < D ? f[1] * z[k][1] : acc_t(0));
    }
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(kFull, dot, offset);
    if (lane == 0) partial[slice * n_own * L_own + own_row] = dot;
  }
}

// out[i] = sum over slices s of partial[s, i], in slice order.
template <typename scalar_t>
__global__ void sum_slices_kernel(const at::opmath_type<scalar_t>* __restrict__ partial, int64_t slices, int64_t count,
                                  scalar_t* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  at::opmath_type<scalar_t> sum = 0;
  for (int64_t s = 0; s < slices; ++s) sum += partial[s * count + i];
  out[i] = static_cast<scalar_t>(sum);
}

}  // namespace bwd

}  // namespace wti
}  // namespace hbi
