// The value kernel of banzhaf_interaction on CUDA (msr forward, msr stratum counts for the backward): one
// thread per coalition computes f(S); stratum sums and counts per chunk. And its launcher.
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
#include "philox.h"

namespace hbi {
namespace banzhaf_cuda {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kValueThreads)
    value_kernel(const scalar_t* __restrict__ sim, const bool* __restrict__ tmask, const bool* __restrict__ vmask,
                 const scalar_t* __restrict__ wt_in, const scalar_t* __restrict__ wv_in, double* __restrict__ ws, int T,
                 int V, int chunks, int64_t per_chunk, int64_t units, uint64_t seed) {
  extern __shared__ __align__(16) unsigned char smem[];
  const ValueLayout L = value_layout<acc_t>(T, V);
  const int64_t pair = blockIdx.x / chunks;
  const int chunk = blockIdx.x - static_cast<int>(pair * chunks);
  const int tid = threadIdx.x;
  const int NT = kValueThreads, MS = kValueThreads + 1;  // member-bit row stride (odd: no conflicts)
  PairData<acc_t> pd;
  load_pair<scalar_t, acc_t>(smem, L.pair, T, V, pair, sim, tmask, vmask, wt_in, wv_in, pd);
  const int nw = pd.nw, nf = pd.nf, ld = pd.ld, n = nw + nf;
  if (nw == 0 || nf == 0) return;  // block-uniform; finalize writes zeros without reading
  uint32_t* memb = reinterpret_cast<uint32_t*>(smem + L.memb);
  double* fbuf = reinterpret_cast<double*>(smem + L.f);
  double* sb = reinterpret_cast<double*>(smem + L.sb);
  double* cb = reinterpret_cast<double*>(smem + L.cb);
  double* sw = reinterpret_cast<double*>(smem + L.sw);
  double* cw = reinterpret_cast<double*>(smem + L.cw);
  double* sf = reinterpret_cast<double*>(smem + L.sf);
  double* cf = reinterpret_cast<double*>(smem + L.cf);
  double* sa = reinterpret_cast<double*>(smem + L.sa);
  for (int c = tid; c < nw * nf; c += NT) {
    sb[c] = 0;
    cb[c] = 0;
  }
  for (int a = tid; a < nw; a += NT) {
    sw[a] = 0;
    cw[a] = 0;
  }
  for (int b = tid; b < nf; b += NT) {
    sf[b] = 0;
    cf[b] = 0;
  }
  if (tid == 0) sa[0] = 0;
  const int nmw = member_words(T, V);
  const int64_t begin = static_cast<int64_t>(chunk) * per_chunk;
  const int64_t end = begin + per_chunk < units ? begin + per_chunk : units;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const acc_t neg_inf = static_cast<acc_t>(-INFINITY);
  __syncthreads();

  for (int64_t r0 = begin; r0 < end; r0 += NT) {
    const int64_t s = r0 + tid;
    const int in_round = static_cast<int>(end - r0 < NT ? end - r0 : NT);
    // Compact membership bits of this thread's coalition: player p (words, then frames) -> bit p.
    for (int w = 0; w < nmw; ++w) memb[w * MS + tid] = 0;
    if (s < end) {
      int blk = -1;
      Philox4 r{};
      for (int p = 0; p < n; ++p) {
        const int pos = p < nw ? pd.words[p] : T + pd.frames[p - nw];
        if ((pos >> 7) != blk) {
          blk = pos >> 7;
          r = philox4x32_10(static_cast<uint32_t>(s), static_cast<uint32_t>(pair), static_cast<uint32_t>(blk), 0u, k0,
                            k1);
        }
        if ((r.v[(pos >> 5) & 3] >> (pos & 31)) & 1u) memb[(p >> 5) * MS + tid] |= 1u << (p & 31);
      }
    }
    // f(S), as WarpGame::value_of(-1, -1, false, false, false): sums in increasing player order.
    // The first 64 players' bits in registers; the others are read from shared memory.
    const uint32_t m0 = memb[tid], m1 = nmw > 1 ? memb[MS + tid] : 0u;
    auto member = [&](int p) -> uint32_t {
      if (p < 32) return (m0 >> p) & 1u;
      if (p < 64) return (m1 >> (p - 32)) & 1u;
      return (memb[(p >> 5) * MS + tid] >> (p & 31)) & 1u;
    };
    // Softmax weights relative to the coalition's own largest logits (exact for any finite logits).
    int nSt = 0, nSv = 0;
    acc_t top_t = neg_inf, top_v = neg_inf;
    for (int a = 0; a < nw; ++a)
      if (member(a)) {
        ++nSt;
        top_t = mx(top_t, pd.wt[a]);
      }
    for (int b = 0; b < nf; ++b)
      if (member(nw + b)) {
        ++nSv;
        top_v = mx(top_v, pd.wv[b]);
      }
    double f = 0;
    if (nSt > 0 && nSv > 0) {
      acc_t text = 0, video = 0, Zt = 0, Zv = 0;
      for (int a = 0; a < nw; ++a) {
        if (!member(a)) continue;
        acc_t m = neg_inf;
        for (int b = 0; b < nf; ++b)
          if (member(nw + b)) m = mx(m, pd.R[a * ld + b]);
        const acc_t e = dev_exp(pd.wt[a] - top_t);
        Zt += e;
        text += e * m;
      }
      for (int b = 0; b < nf; ++b) {
        if (!member(nw + b)) continue;
        acc_t m = neg_inf;
        for (int a = 0; a < nw; ++a)
          if (member(a)) m = mx(m, pd.R[a * ld + b]);
        const acc_t e = dev_exp(pd.wv[b] - top_v);
        Zv += e;
        video += e * m;
      }
      text /= Zt;
      video /= Zv;
      f = static_cast<double>(acc_t(0.5) * (text + video));
    }
    fbuf[tid] = f;
    __syncthreads();
    // Stratum sums over this round's coalitions (each entry owned by one thread: no races).
    for (int c = tid; c < nw * nf; c += NT) {
      const int a = c / nf, b = c - a * nf, pb = nw + b;
      double s_sum = 0, s_cnt = 0;
      for (int k = 0; k < in_round; ++k) {
        const uint32_t both = (memb[(a >> 5) * MS + k] >> (a & 31)) & (memb[(pb >> 5) * MS + k] >> (pb & 31)) & 1u;
        if (both) {
          s_sum += fbuf[k];
          s_cnt += 1;
        }
      }
      sb[c] += s_sum;
      cb[c] += s_cnt;
    }
    for (int p = tid; p < n; p += NT) {
      double s_sum = 0, s_cnt = 0;
      for (int k = 0; k < in_round; ++k)
        if ((memb[(p >> 5) * MS + k] >> (p & 31)) & 1u) {
          s_sum += fbuf[k];
          s_cnt += 1;
        }
      if (p < nw) {
        sw[p] += s_sum;
        cw[p] += s_cnt;
      } else {
        sf[p - nw] += s_sum;
        cf[p - nw] += s_cnt;
      }
    }
    if (tid == 0) {
      double t = 0;
      for (int k = 0; k < in_round; ++k) t += fbuf[k];
      sa[0] += t;
    }
    __syncthreads();
  }
  // Partial of this chunk at full positions (real ones only: finalize reads nothing else).
  double* out = ws + (pair * chunks + chunk) * value_ws_stride(T, V);
  const int64_t TV = static_cast<int64_t>(T) * V;
  for (int c = tid; c < nw * nf; c += NT) {
    const int a = c / nf, b = c - a * nf;
    const int64_t k = static_cast<int64_t>(pd.words[a]) * V + pd.frames[b];
    out[k] = sb[c];
    out[TV + k] = cb[c];
  }
  for (int a = tid; a < nw; a += NT) {
    out[2 * TV + pd.words[a]] = sw[a];
    out[2 * TV + T + pd.words[a]] = cw[a];
  }
  for (int b = tid; b < nf; b += NT) {
    out[2 * TV + 2 * T + pd.frames[b]] = sf[b];
    out[2 * TV + 2 * T + V + pd.frames[b]] = cf[b];
  }
  if (tid == 0) out[2 * TV + 2 * T + 2 * V] = sa[0];
}

template <typename scalar_t>
void launch_value(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
                  const at::Tensor& wv, at::Tensor& ws, int chunks, int64_t units, const Settings& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = sim.size(0);
  const int T = static_cast<int>(sim.size(1)), V = static_cast<int>(sim.size(2));
  const size_t bytes = value_layout<acc_t>(T, V).total;
  auto kernel = value_kernel<scalar_t, acc_t>;
  allow_shared(kernel, bytes, T, V);
  const int64_t per_chunk = (units + chunks - 1) / chunks;
  kernel<<<static_cast<unsigned>(B * chunks), kValueThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      sim.data_ptr<scalar_t>(), tm.data_ptr<bool>(), vm.data_ptr<bool>(), wt.data_ptr<scalar_t>(),
      wv.data_ptr<scalar_t>(), ws.data_ptr<double>(), T, V, chunks, per_chunk, units, s.seed);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define HBI_LAUNCH_VALUE(scalar_t)                                                                                 \
  template void launch_value<scalar_t>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, \
                                       const at::Tensor&, at::Tensor&, int, int64_t, const Settings&);
HBI_LAUNCH_VALUE(double)
HBI_LAUNCH_VALUE(float)
HBI_LAUNCH_VALUE(at::Half)
HBI_LAUNCH_VALUE(at::BFloat16)
#undef HBI_LAUNCH_VALUE

}  // namespace banzhaf_cuda
}  // namespace hbi
