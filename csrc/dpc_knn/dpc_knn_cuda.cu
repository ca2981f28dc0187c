// CUDA kernel of hbi_ops::dpc_knn (docs/dpc_knn.md): density-peaks clustering with k-nearest-neighbour
// density. Same arithmetic as the CPU kernel (csrc/dpc_knn/dpc_knn_cpu.cpp): both call the rules of
// dpc_knn_rules.h, so idx and centers are identical to it (and to the oracle) on data without near-ties:
//   * squared distance: 8 interleaved partial sums (channel c < 8*floor(C/8) goes to lane c mod 8, in
//     ascending order), the remainder summed sequentially, the lanes combined by the fixed tree
//     ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) then + remainder; multiplies and adds with explicit
//     round-to-nearest intrinsics (no FMA contraction, as the CPU build); Dist = sqrt_rn(s) / sqrt(C);
//   * rho = exp(-(sum of the k smallest squared masked entries, ascending) / k), exp in float64 rounded
//     once; padded tokens 0; the density order and the score order are total orders (NaN above
//     everything, ties to the lower index), so centres are always distinct.
// No sort is needed: delta_i = min over the tokens j denser than i (a predicate on (real, rho, index)),
// seeded with the largest masked entry (the densest token keeps it); the centre of rank r is the token
// with exactly r tokens ahead of it in the score order (counting); each token joins the centre with the
// smallest Dist (strict <, lower cluster on ties) and each centre its own cluster.
//
// Two paths:
//   * N <= 64 (text, frames): one block of 512 threads per sample, everything fused in shared memory
//     (N x N distances; 8 threads per pair, one per partial-sum lane, combined by shuffles in the CPU
//     tree order).
//   * larger N (image tokens): five kernels over a chunk of samples whose N x N distance matrices fit a
//     2 GiB workspace (one sample at least): (1) 32 x 32 distance tiles on and above the diagonal (x tiles
//     staged in shared memory, each thread 4 x 2 pairs), written to both halves, per-sample maxima by
//     integer atomicMax on the (non-negative) float bits -- max is order-independent, so deterministic;
//     (2) one block per row: the row in shared memory, k-th smallest by an 8-bit radix select, the
//     smaller entries sorted by rank counting, summed ascending -> rho; (3) one block per row: delta and
//     score; (4) ranks by counting over the sample's scores -> centres; (5) one thread per token:
//     assignment. Limits: the row kernel keeps a row plus 2k entries in shared memory, so N + 2k is bounded
//     by the device's opt-in shared memory (about 29,000 tokens in float64, 58,000 in float32 on an H100);
//     above it the op raises a clear error. One sample's N x N matrix must also fit in GPU memory.
//
// Floors (H100: 3.35 TB/s; ~51 TFLOP/s fp32 without tensor cores = ~25.6 T FP32 instructions/s counting an
// FMA as 2 flops; H200 4.24 TB/s), float32:
//   text   B=128 N=32 C=512: x 8.4 MB -> 2.5 us of HBM; distances 128*496 pairs*512*3 instr = 0.1 G -> 4 us
//          spread over 128 blocks (one wave). Floor ~5 us + launch; expected ~10 us.
//   frames B=128 N=12 C=512: 3.1 MB -> ~1 us; 0.013 G instr. Floor ~2 us + launch; expected ~5 us.
//   image  B=32 N=3136 C=64 K=784: distances (half, symmetric) 32*4.97M pairs*64*3 = 30 G instr -> 1.2 ms at
//          25.6 T/s (the exact-order sub, mul, add costs 3 instructions where sub + FMA would be 2, i.e.
//          0.8 ms, but FMA rounds differently from the cpu kernel). The matrix (1.26 GB) is written once and
//          read by the density and delta passes: 3.8 GB -> 1.1 ms at 3.35 TB/s (0.9 ms on an H200),
//          partly overlapping the compute. Rank + assignment ~0.2 ms. Expected ~2 ms on an H100: above the
//          1.5 ms target; the ways down are FMA distances (if CPU bit-equality is dropped), a
//          fused density + delta pass, and 4x4 register blocking with vector shared-memory loads.
//
// This file: launch heuristics (which path, chunk size, shared memory), the entry point and its registration;
// the kernels are in dpc_knn_small_kernel.cuh and dpc_knn_large_kernels.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

#include "dpc_knn/dpc_knn_args.h"
#include "dpc_knn/dpc_knn_large_kernels.cuh"
#include "dpc_knn/dpc_knn_small_kernel.cuh"

namespace {

using namespace hbi::dpc;

template <typename scalar_t, typename acc_t>
void run_small(const at::Tensor& x, const at::Tensor& real, int64_t num_clusters, int64_t k, at::Tensor& idx,
               at::Tensor& centers, cudaStream_t stream) {
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  const size_t shared = static_cast<size_t>(n * n + 4 * n) * sizeof(acc_t) + 2 * n * sizeof(int) + n;
  const acc_t scale = distance_scale<acc_t>(width);
  TORCH_CHECK(batch <= 0x7fffffff, "dpc_knn (cuda kernel): batch too large");
  small_kernel<scalar_t, acc_t><<<static_cast<unsigned>(batch), kSmallThreads, shared, stream>>>(
      x.const_data_ptr<scalar_t>(), real.const_data_ptr<bool>(), n, width, num_clusters, k, scale,
      idx.mutable_data_ptr<int64_t>(), centers.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
void run_large(const at::Tensor& x, const at::Tensor& real, int64_t num_clusters, int64_t k, at::Tensor& idx,
               at::Tensor& centers, cudaStream_t stream) {
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  const acc_t scale = distance_scale<acc_t>(width);

  const size_t density_shared = static_cast<size_t>(n + 2 * k) * sizeof(acc_t);
  const size_t static_shared = 256 * sizeof(int) + 64;
  const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
  const size_t limit = properties->sharedMemPerBlockOptin;
  TORCH_CHECK(density_shared + static_shared <= limit, "dpc_knn (cuda kernel): N=", n, " and k=", k, " need ",
              density_shared + static_shared, " bytes of shared memory per block, more than this device's ", limit,
              "; use fewer tokens per sample (or the cpu / torch backend)");
  if (density_shared + static_shared > 48 * 1024) {  // the default limit counts static shared memory too
    C10_CUDA_CHECK(cudaFuncSetAttribute(density_kernel<acc_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(density_shared)));
  }
  const int64_t tiles = (n + kTile - 1) / kTile;
  TORCH_CHECK(tiles <= 65535, "dpc_knn (cuda kernel): N too large");
  const int64_t per_sample = n * n * static_cast<int64_t>(sizeof(acc_t));
  int64_t chunk = std::max<int64_t>(1, kWorkspaceBytes / per_sample);
  chunk = std::min<int64_t>({chunk, batch, 65535, 0x7fffffff / n});

  const auto options = x.options().dtype(acc_dtype);
  at::Tensor dist = at::empty({chunk, n, n}, options);
  at::Tensor stats = at::empty({chunk, 3}, options);
  at::Tensor rho = at::empty({chunk, n}, options);
  at::Tensor score = at::empty({chunk, n}, options);
  at::Tensor rank = at::empty({chunk, n}, x.options().dtype(at::kInt));

  for (int64_t b0 = 0; b0 < batch; b0 += chunk) {
    const int64_t samples = std::min(chunk, batch - b0);
    const scalar_t* xb = x.const_data_ptr<scalar_t>() + b0 * n * width;
    const bool* rb = real.const_data_ptr<bool>() + b0 * n;
    int64_t* cb = centers.mutable_data_ptr<int64_t>() + b0 * num_clusters;
    int64_t* ib = idx.mutable_data_ptr<int64_t>() + b0 * n;
    stats.zero_();  // on the current stream

    const dim3 tile_grid(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles), static_cast<unsigned>(samples));
    tile_distance_kernel<scalar_t, acc_t><<<tile_grid, dim3(kTileCols, kTileRows), 0, stream>>>(
        xb, rb, n, width, scale, dist.mutable_data_ptr<acc_t>(), stats.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const unsigned rows = static_cast<unsigned>(samples * n);
    density_kernel<acc_t><<<rows, kRowThreads, density_shared, stream>>>(
        dist.const_data_ptr<acc_t>(), rb, stats.const_data_ptr<acc_t>(), n, k, rho.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    delta_kernel<acc_t><<<rows, kRowThreads, 0, stream>>>(dist.const_data_ptr<acc_t>(), rb,
                                                          stats.const_data_ptr<acc_t>(), rho.const_data_ptr<acc_t>(), n,
                                                          score.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const dim3 rank_grid(static_cast<unsigned>((n + kRowThreads - 1) / kRowThreads), static_cast<unsigned>(samples));
    rank_kernel<acc_t><<<rank_grid, kRowThreads, 0, stream>>>(score.const_data_ptr<acc_t>(), n, num_clusters,
                                                              rank.mutable_data_ptr<int32_t>(), cb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const unsigned token_blocks = static_cast<unsigned>((samples * n + kRowThreads - 1) / kRowThreads);
    assign_kernel<acc_t><<<token_blocks, kRowThreads, 0, stream>>>(
        dist.const_data_ptr<acc_t>(), rb, rank.const_data_ptr<int32_t>(), cb, samples, n, num_clusters, ib);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor> dpc_knn_cuda(const at::Tensor& x, const at::Tensor& mask, int64_t num_clusters,
                                                int64_t k) {
  TORCH_CHECK(x.defined() && mask.defined(), "dpc_knn: x and mask must be defined tensors");
  TORCH_CHECK(x.is_cuda(), "dpc_knn (cuda kernel): x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(mask.device() == x.device(), "dpc_knn (cuda kernel): mask must be on x's device ", x.device(), ", got ",
              mask.device());
  hbi::check_dpc_knn_args(x, mask, num_clusters, k);
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  TORCH_CHECK(n < (int64_t{1} << 31), "dpc_knn (cuda kernel): N must be below 2^31");

  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor real = (mask.scalar_type() == at::kBool ? mask : mask.ne(0)).contiguous();
  at::Tensor idx = at::empty({batch, n}, x.options().dtype(at::kLong));
  at::Tensor centers = at::empty({batch, num_clusters}, x.options().dtype(at::kLong));
  if (batch == 0) return {idx, centers};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "dpc_knn_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (n <= kSmallN) {
      run_small<scalar_t, acc_t>(xc, real, num_clusters, k, idx, centers, stream);
    } else {
      run_large<scalar_t, acc_t>(xc, real, num_clusters, k, idx, centers, stream);
    }
  });
  return {idx, centers};
}

}  // namespace

TORCH_LIBRARY_IMPL(hbi_ops, CUDA, m) { m.impl("dpc_knn", &dpc_knn_cuda); }