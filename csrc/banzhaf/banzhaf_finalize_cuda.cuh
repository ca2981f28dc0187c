// Finalize kernels of banzhaf_interaction on CUDA: fixed-order reductions over the chunks of the cells and
// value kernels' workspaces (deterministic forward). Included by banzhaf_launch_cuda.cu only.
#pragma once
#include <ATen/OpMathType.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "banzhaf/banzhaf_device_cuda.cuh"
#include "banzhaf/banzhaf_layout_cuda.cuh"

namespace hbi {
namespace banzhaf_cuda {

// Real players of pair b (O(T + V)); -1 when it has no word or no frame.
__device__ inline int players_of(const bool* tmask, const bool* vmask, int64_t pair, int T, int V, int& nw, int& nf) {
  nw = 0;
  nf = 0;
  for (int t = 0; t < T; ++t) nw += tmask[pair * T + t];
  for (int v = 0; v < V; ++v) nf += vmask[pair * V + v];
  return nw + nf;
}

// Paired / exact-reference forward.
template <typename scalar_t>
__global__ void cells_finalize_kernel(const double* __restrict__ ws, const bool* __restrict__ tmask,
                                      const bool* __restrict__ vmask, scalar_t* __restrict__ out, int64_t B, int T,
                                      int V, int chunks, bool exact, double num_samples) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t TV = static_cast<int64_t>(T) * V, total = B * TV;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = e / TV, k = e - pair * TV;
    const int t = static_cast<int>(k / V), v = static_cast<int>(k - static_cast<int64_t>(t) * V);
    double r = 0;
    if (tmask[pair * T + t] && vmask[pair * V + v]) {
      double s = 0;
      for (int c = 0; c < chunks; ++c) s += ws[(pair * chunks + c) * TV + k];
      if (exact) {
        int nw, nf;
        const int n = players_of(tmask, vmask, pair, T, V, nw, nf);
        if (n > kMaxExactPlayers)
          r = NAN;
        else
          r = s * (1.0 / static_cast<double>((int64_t(1) << n) >> 2));
      } else {
        r = s / num_samples;
      }
    }
    out[e] = static_cast<scalar_t>(static_cast<acc_t>(r));
  }
}

// msr forward from the stratum sums.
template <typename scalar_t>
__global__ void value_finalize_kernel(const double* __restrict__ ws, const bool* __restrict__ tmask,
                                      const bool* __restrict__ vmask, scalar_t* __restrict__ out, int64_t B, int T,
                                      int V, int chunks, double num_samples) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t TV = static_cast<int64_t>(T) * V, total = B * TV, stride = value_ws_stride(T, V);
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = e / TV, k = e - pair * TV;
    const int t = static_cast<int>(k / V), v = static_cast<int>(k - static_cast<int64_t>(t) * V);
    double r = 0;
    if (tmask[pair * T + t] && vmask[pair * V + v]) {
      double both = 0, cboth = 0, word = 0, cword = 0, frame = 0, cframe = 0, all = 0;
      for (int c = 0; c < chunks; ++c) {
        const double* p = ws + (pair * chunks + c) * stride;
        both += p[k];
        cboth += p[TV + k];
        word += p[2 * TV + t];
        cword += p[2 * TV + T + t];
        frame += p[2 * TV + 2 * T + v];
        cframe += p[2 * TV + 2 * T + V + v];
        all += p[2 * TV + 2 * T + 2 * V];
      }
      auto mean = [](double total_, double count) { return count > 0 ? total_ / count : 0.0; };
      r = mean(both, cboth) - mean(word - both, cword - cboth) - mean(frame - both, cframe - cboth) +
          mean(all - word - frame + both, num_samples - cword - cframe + cboth);
    }
    out[e] = static_cast<scalar_t>(static_cast<acc_t>(r));
  }
}

// gw[b, t, v, stratum] = d estimate[t, v] / d f(S) for S in the stratum (word in: 2, frame in: 1),
// times grad[t, v]: msr +-1 / (stratum count).
template <typename scalar_t>
__global__ void stratum_weight_kernel(const double* __restrict__ ws, const bool* __restrict__ tmask,
                                      const bool* __restrict__ vmask, const scalar_t* __restrict__ grad,
                                      double* __restrict__ gw, int64_t B, int T, int V, int chunks,
                                      double num_samples) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t TV = static_cast<int64_t>(T) * V, total = B * TV, stride = value_ws_stride(T, V);
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = e / TV, k = e - pair * TV;
    const int t = static_cast<int>(k / V), v = static_cast<int>(k - static_cast<int64_t>(t) * V);
    double w[4] = {0, 0, 0, 0};
    if (tmask[pair * T + t] && vmask[pair * V + v]) {
      const double g = static_cast<double>(static_cast<acc_t>(grad[e]));
      double cboth = 0, cword = 0, cframe = 0;
      for (int c = 0; c < chunks; ++c) {
        const double* p = ws + (pair * chunks + c) * stride;
        cboth += p[TV + k];
        cword += p[2 * TV + T + t];
        cframe += p[2 * TV + 2 * T + V + v];
      }
      const double count[4] = {num_samples - cword - cframe + cboth, cframe - cboth, cword - cboth, cboth};
      const double sign[4] = {1.0, -1.0, -1.0, 1.0};
      for (int q = 0; q < 4; ++q) w[q] = count[q] > 0 ? g * (sign[q] / count[q]) : 0.0;
    }
    for (int q = 0; q < 4; ++q) gw[e * 4 + q] = w[q];
  }
}

template <typename scalar_t>
__global__ void backward_finalize_kernel(const double* __restrict__ ws, const bool* __restrict__ tmask,
                                         const bool* __restrict__ vmask, scalar_t* __restrict__ grad_sim,
                                         scalar_t* __restrict__ grad_wt, scalar_t* __restrict__ grad_wv, int64_t B,
                                         int T, int V, int chunks, bool exact) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t TV = static_cast<int64_t>(T) * V, per = TV + T + V, total = B * per;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = e / per, k = e - pair * per;
    acc_t s = 0;  // the CPU kernel accumulates gradients in acc_t
    for (int c = 0; c < chunks; ++c) s += static_cast<acc_t>(ws[(pair * chunks + c) * per + k]);
    if (exact) {  // the forward's device guard: a pair with too many players gets NaN, not a zero gradient
      int nw, nf;
      if (players_of(tmask, vmask, pair, T, V, nw, nf) > kMaxExactPlayers) s = static_cast<acc_t>(NAN);
    }
    if (k < TV)
      grad_sim[pair * TV + k] = static_cast<scalar_t>(s);
    else if (k < TV + T)
      grad_wt[pair * T + (k - TV)] = static_cast<scalar_t>(s);
    else
      grad_wv[pair * V + (k - TV - T)] = static_cast<scalar_t>(s);
  }
}

}  // namespace banzhaf_cuda
}  // namespace hbi
