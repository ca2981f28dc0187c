// The cells kernel of banzhaf_interaction on CUDA (paired forward and backward, exact-reference, msr
// backward): one warp per coalition running WarpGame (banzhaf_warp_game_cuda.cuh), and its launcher.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cuda_runtime.h>

#include <cstdint>

#include "banzhaf/banzhaf_device_cuda.cuh"
#include "banzhaf/banzhaf_kernels_cuda.h"
#include "banzhaf/banzhaf_layout_cuda.cuh"
#include "banzhaf/banzhaf_pair_cuda.cuh"
#include "banzhaf/banzhaf_warp_unit.h"

namespace hbi {
namespace banzhaf_cuda {

template <typename scalar_t, typename acc_t, int kMode>
__global__ void __launch_bounds__(128)
    cells_kernel(const scalar_t* __restrict__ sim, const bool* __restrict__ tmask, const bool* __restrict__ vmask,
                 const scalar_t* __restrict__ wt_in, const scalar_t* __restrict__ wv_in,
                 const scalar_t* __restrict__ grad_in, const double* __restrict__ gw_in, double* __restrict__ ws, int T,
                 int V, int chunks, int64_t per_chunk, int64_t units, bool exact, bool reference, uint64_t seed,
                 acc_t unit_scale) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr bool kBwd = kMode == kBwdCells || kMode == kBwdValue;
  const int warps = blockDim.x / kWarp;
  const CellsLayout L = cells_layout<acc_t>(T, V, warps, kMode);
  const int64_t pair = blockIdx.x / chunks;
  const int chunk = blockIdx.x - static_cast<int>(pair * chunks);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  PairData<acc_t> pd;
  load_pair<scalar_t, acc_t>(smem, L.pair, T, V, pair, sim, tmask, vmask, wt_in, wv_in, pd);
  const int nw = pd.nw, nf = pd.nf, ld = pd.ld;
  const int64_t stride = cells_ws_stride(T, V, kBwd);
  double* out = ws + (pair * chunks + chunk) * stride;

  // Units of this pair and chunk (block-uniform).
  int64_t units_b = units;
  bool active = nw > 0 && nf > 0;
  if (exact) {
    const int n = nw + nf;
    if (n > kMaxExactPlayers)
      active = false;  // device guard; finalize writes NaN
    else
      units_b = int64_t(1) << n;
  }
  // exact: the grid is sized for the largest pair; split this pair's own 2^n evenly over its chunks
  const int64_t per_chunk_b = exact ? (units_b + chunks - 1) / chunks : per_chunk;
  const int64_t begin = static_cast<int64_t>(chunk) * per_chunk_b;
  const int64_t end = begin + per_chunk_b < units_b ? begin + per_chunk_b : units_b;
  if (begin >= end) active = false;

  DevGrads<acc_t> grads{nullptr, nullptr, nullptr};
  acc_t* gc = nullptr;
  double* gw = nullptr;
  if (kBwd) {
    grads.sim = reinterpret_cast<acc_t*>(smem + L.grad_sim);
    grads.text_weight = reinterpret_cast<acc_t*>(smem + L.grad_wt);
    grads.video_weight = reinterpret_cast<acc_t*>(smem + L.grad_wv);
    for (int k = tid; k < T * ld; k += blockDim.x) grads.sim[k] = 0;
    for (int k = tid; k < T; k += blockDim.x) grads.text_weight[k] = 0;
    for (int k = tid; k < V; k += blockDim.x) grads.video_weight[k] = 0;
    if (kMode == kBwdCells) {
      gc = reinterpret_cast<acc_t*>(smem + L.gc);
      for (int c = tid; c < nw * nf; c += blockDim.x) {
        const int a = c / nf, b = c - a * nf;
        gc[c] = static_cast<acc_t>(grad_in[(pair * T + pd.words[a]) * static_cast<int64_t>(V) + pd.frames[b]]);
      }
    } else {
      gw = reinterpret_cast<double*>(smem + L.gw);
      for (int c = tid; c < nw * nf; c += blockDim.x) {
        const int a = c / nf, b = c - a * nf;
        const double* src = gw_in + ((pair * T + pd.words[a]) * static_cast<int64_t>(V) + pd.frames[b]) * 4;
        for (int k = 0; k < 4; ++k) gw[c * 4 + k] = src[k];
      }
    }
  }
  unsigned char* wbase = smem + L.warp0 + L.warp_stride * warp;
  WarpGame<acc_t, CudaLane> g;
  g.pd = &pd;
  g.T = T;
  g.V = V;
  g.ld = ld;
  g.nw = nw;
  g.nf = nf;
  g.R = pd.R;
  g.wt = pd.wt;
  g.wv = pd.wv;
  g.bits = reinterpret_cast<uint32_t*>(wbase + L.bits);
  g.in_t = wbase + L.in_t;
  g.in_v = wbase + L.in_v;
  g.r1 = reinterpret_cast<acc_t*>(wbase + L.r1);
  g.r2 = reinterpret_cast<acc_t*>(wbase + L.r2);
  g.k1 = reinterpret_cast<acc_t*>(wbase + L.k1);
  g.k2 = reinterpret_cast<acc_t*>(wbase + L.k2);
  g.ra = reinterpret_cast<int*>(wbase + L.ra);
  g.rb = reinterpret_cast<int*>(wbase + L.rb);
  g.ka = reinterpret_cast<int*>(wbase + L.ka);
  g.kb = reinterpret_cast<int*>(wbase + L.kb);
  acc_t* side[8];
  for (int k = 0; k < 8; ++k) side[k] = reinterpret_cast<acc_t*>(wbase + L.side[k]);
  g.text.E1 = side[0];
  g.text.E2 = side[1];
  g.text.join_g = side[2];
  g.text.join_e = side[3];
  g.video.E1 = side[4];
  g.video.E2 = side[5];
  g.video.join_g = side[6];
  g.video.join_e = side[7];
  if (kMode == kFwdFast) {
    acc_t* fast[8];
    for (int k = 0; k < 8; ++k) fast[k] = reinterpret_cast<acc_t*>(wbase + L.fast[k]);
    g.P1 = fast[0];
    g.Q1 = fast[1];
    g.P2 = fast[2];
    g.Q2 = fast[3];
    g.G1 = fast[4];
    g.H1 = fast[5];
    g.G2 = fast[6];
    g.H2 = fast[7];
  }
  double* acc = kBwd ? nullptr : reinterpret_cast<double*>(wbase + L.acc);
  if (!kBwd)
    for (int c = lane; c < nw * nf; c += kWarp) acc[c] = 0;
  __syncthreads();

  if (active) {
    // Per-cell gradient scale: 1 / num_samples (paired), 1 / 2^(n - 2) (exact reference), as the CPU kernel.
    const acc_t cell_scale = exact ? acc_t(1) / static_cast<acc_t>(units_b >> 2) : unit_scale;
    const CellWalk walk = cell_walk<CudaLane>(nw, nf, lane);
    for (int64_t u = begin + warp; u < end; u += warps)
      cells_unit<kMode>(g, walk, u, static_cast<uint32_t>(pair), seed, exact, reference, cell_scale, acc, gc, gw,
                        &grads, lane);
  }
  __syncthreads();
  // Per-chunk partial, every entry written (zeros at padding), warps added in fixed order.
  if (!kBwd) {
    for (int64_t k = tid; k < static_cast<int64_t>(T) * V; k += blockDim.x) {
      const int t = static_cast<int>(k / V), v = static_cast<int>(k - static_cast<int64_t>(t) * V);
      const int a = pd.rank_w[t], b = pd.rank_f[v];
      double s = 0;
      if (active && a >= 0 && b >= 0) {
        const int c = a * nf + b;
        for (int w = 0; w < warps; ++w)
          s += reinterpret_cast<const double*>(smem + L.warp0 + L.warp_stride * w + L.acc)[c];
      }
      out[k] = s;
    }
  } else {
    const int64_t TV = static_cast<int64_t>(T) * V;
    for (int64_t k = tid; k < TV + T + V; k += blockDim.x) {
      double s = 0;
      if (active) {
        if (k < TV) {
          const int t = static_cast<int>(k / V), v = static_cast<int>(k - static_cast<int64_t>(t) * V);
          const int a = pd.rank_w[t], b = pd.rank_f[v];
          if (a >= 0 && b >= 0) s = static_cast<double>(grads.sim[a * ld + b]);
        } else if (k < TV + T) {
          const int a = pd.rank_w[k - TV];
          if (a >= 0) s = static_cast<double>(grads.text_weight[a]);
        } else {
          const int b = pd.rank_f[k - TV - T];
          if (b >= 0) s = static_cast<double>(grads.video_weight[b]);
        }
      }
      out[k] = s;
    }
  }
}

template <typename scalar_t, int kMode>
void launch_cells(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
                  const at::Tensor& wv, const at::Tensor* grad, const at::Tensor* gw, at::Tensor& ws, int chunks,
                  int64_t units, const Settings& s, double unit_scale, int warps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = sim.size(0);
  const int T = static_cast<int>(sim.size(1)), V = static_cast<int>(sim.size(2));
  const size_t bytes = cells_layout<acc_t>(T, V, warps, kMode).total;
  auto kernel = cells_kernel<scalar_t, acc_t, kMode>;
  allow_shared(kernel, bytes, T, V);
  const int64_t per_chunk = (units + chunks - 1) / chunks;
  kernel<<<static_cast<unsigned>(B * chunks), warps * kWarp, bytes, at::cuda::getCurrentCUDAStream()>>>(
      sim.data_ptr<scalar_t>(), tm.data_ptr<bool>(), vm.data_ptr<bool>(), wt.data_ptr<scalar_t>(),
      wv.data_ptr<scalar_t>(), grad ? grad->data_ptr<scalar_t>() : nullptr, gw ? gw->data_ptr<double>() : nullptr,
      ws.data_ptr<double>(), T, V, chunks, per_chunk, units, s.estimator == Estimator::kExact, s.reference, s.seed,
      static_cast<acc_t>(unit_scale));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define HBI_LAUNCH_CELLS(scalar_t, mode)                                                             \
  template void launch_cells<scalar_t, mode>(                                                        \
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, \
      const at::Tensor*, const at::Tensor*, at::Tensor&, int, int64_t, const Settings&, double, int);
#define HBI_LAUNCH_CELLS_ALL(scalar_t)  \
  HBI_LAUNCH_CELLS(scalar_t, kFwdFast)  \
  HBI_LAUNCH_CELLS(scalar_t, kFwdSlow)  \
  HBI_LAUNCH_CELLS(scalar_t, kBwdCells) \
  HBI_LAUNCH_CELLS(scalar_t, kBwdValue)
HBI_LAUNCH_CELLS_ALL(double)
HBI_LAUNCH_CELLS_ALL(float)
HBI_LAUNCH_CELLS_ALL(at::Half)
HBI_LAUNCH_CELLS_ALL(at::BFloat16)
#undef HBI_LAUNCH_CELLS_ALL
#undef HBI_LAUNCH_CELLS

}  // namespace banzhaf_cuda
}  // namespace hbi
