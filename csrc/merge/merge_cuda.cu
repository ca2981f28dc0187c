// CUDA kernels of hbi_ops::merge_tokens and hbi_ops::merge_tokens_backward (docs/merge.md).
//
//   W[c]   = sum_{n: idx_n = c} w_n
//   out[c] = sum_{n: idx_n = c} w_n x_n / (W[c] + 1e-6)
//   grad_x[n] = grad[c] * w_n / (W[c] + 1e-6)                       (c = idx_n)
//   grad_w[n] = <grad[c], x_n - out[c]> / (W[c] + 1e-6)
//
// Design (deterministic, no atomics on values):
//   1. `bucket_kernel`, one warp per sample: a stable counting sort of the tokens by cluster (CSR):
//      offsets [B, K+1] and the token list [B, N] (int32) ordered by (cluster, token index). Counting
//      uses shared-memory integer atomics (exact); the placement walks the tokens 32 at a time in order
//      (__match_any_sync ranks equal clusters inside a warp step), so the order is fixed.
//   2. `sum_kernel`, one warp per (sample, cluster, 32*V channels): walks its cluster's tokens in
//      ascending token order and accumulates w_n * x_n with explicit round-to-nearest multiply and add
//      (no FMA contraction), exactly as the CPU kernel does: the forward output is bit-identical to the
//      `cpu` backend's. The backward recomputes W and out in the accumulate type (as the CPU does).
//   3. backward `token_kernel`, one warp per token: grad_x row and the dot product (warp tree reduction,
//      so grad_w differs from the CPU's sequential sum by rounding only).
// Out-of-range idx values (the Python check reads idx on CPU tensors only: on the GPU it would need a host
// sync) stop the program with a device-side assertion, as torch's own index ops do (the cpu kernel raises
// an error). The kernels stay memory-safe past it: such a token belongs to no cluster and writes nothing.
//
// Floor (H100, 3.35 TB/s; H200 4.24 TB/s), float32 forward:
//   text  B=128 N=32 C=512 K=16: read x 8.4 MB + write out 4.2 MB = 12.6 MB -> 3.8 us (H100);
//   image B=32 N=3136 C=64 K=784: read x 25.7 MB + write 6.4 MB = 32 MB -> 9.6 us (H100).
//   Flops (2 per element of x) are negligible; the kernel is bandwidth-bound plus ~2 launches (~5 us).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "merge/merge_args.h"
#include "merge/merge_rules.h"

namespace {

using namespace hbi::merge;

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

// One warp (blockDim.x == 32) per sample; dynamic shared memory: (K + 1) ints.
// offsets[b, c] = first position of cluster c in order[b, :]; offsets[b, K] = number of in-range tokens.
__global__ void bucket_kernel(const int64_t* __restrict__ idx, int64_t n, int64_t num_clusters,
                              int32_t* __restrict__ offsets, int32_t* __restrict__ order) {
  extern __shared__ int cursor[];  // [K + 1]
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x;
  const int64_t* row = idx + b * n;
  for (int64_t c = lane; c <= num_clusters; c += kWarp) cursor[c] = 0;
  __syncwarp();
  for (int64_t t = lane; t < n; t += kWarp) {
    const int64_t c = row[t];
    CUDA_KERNEL_ASSERT_MSG(c >= 0 && c < num_clusters, "merge_tokens: idx must hold values in [0, num_clusters)");
    if (c >= 0 && c < num_clusters) atomicAdd(&cursor[c], 1);
  }
  __syncwarp();
  {  // exclusive scan: each lane a contiguous run of clusters, lanes combined by a shuffle scan
    const int64_t per_lane = (num_clusters + kWarp - 1) / kWarp;
    const int64_t c_begin = min(num_clusters, lane * per_lane);
    const int64_t c_end = min(num_clusters, c_begin + per_lane);
    int sum = 0;
    for (int64_t c = c_begin; c < c_end; ++c) sum += cursor[c];
    int inclusive = sum;
#pragma unroll
    for (int offset = 1; offset < kWarp; offset *= 2) {
      const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    const int total = __shfl_sync(0xffffffffu, inclusive, kWarp - 1);
    int running = inclusive - sum;
    __syncwarp();
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int count = cursor[c];
      cursor[c] = running;
      running += count;
    }
    if (lane == 0) cursor[num_clusters] = total;
  }
  __syncwarp();
  int32_t* off = offsets + b * (num_clusters + 1);
  for (int64_t c = lane; c <= num_clusters; c += kWarp) off[c] = cursor[c];
  __syncwarp();
  int32_t* ord = order + b * n;
  const unsigned lower_lanes = (1u << lane) - 1u;
  for (int64_t t0 = 0; t0 < n; t0 += kWarp) {
    const int64_t t = t0 + lane;
    const bool active = t < n;
    int64_t c = active ? row[t] : -1;
    const bool valid = active && c >= 0 && c < num_clusters;
    if (!valid) c = -1;  // every invalid lane in one group, never written
    const unsigned group = __match_any_sync(0xffffffffu, c);
    int position = 0;
    if (valid) position = cursor[c] + __popc(group & lower_lanes);
    __syncwarp();
    if (valid) {
      ord[position] = static_cast<int32_t>(t);
      if ((group & lower_lanes) == 0u) cursor[c] += __popc(group);  // the group's lowest lane
    }
    __syncwarp();
  }
}

// One warp per (sample, cluster, channel block of 32 * V). Writes out [B, K, C] in out_t, and W [B, K]
// (acc_t) when total != nullptr. Accumulation order: tokens ascending, as the CPU kernel.
template <typename scalar_t, typename acc_t, typename out_t, int V>
__global__ void sum_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                           const int32_t* __restrict__ offsets, const int32_t* __restrict__ order, int64_t batch,
                           int64_t n, int64_t width, int64_t num_clusters, int64_t channel_blocks,
                           out_t* __restrict__ out, acc_t* __restrict__ total) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= batch * num_clusters * channel_blocks) return;
  const int64_t block_c = warp % channel_blocks;
  const int64_t bc = warp / channel_blocks;  // b * K + c
  const int64_t b = bc / num_clusters, c = bc % num_clusters;
  const int32_t begin = offsets[b * (num_clusters + 1) + c], end = offsets[b * (num_clusters + 1) + c + 1];
  const int32_t* ord = order + b * n;
  const scalar_t* xb = x + b * n * width;
  const scalar_t* wb = w + b * n;
  acc_t acc[V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = acc_t(0);
  acc_t weight_sum = acc_t(0);
  const int64_t ch0 = block_c * (kWarp * V) + lane;
  for (int32_t p = begin; p < end; ++p) {
    const int64_t t = ord[p];
    const acc_t wt = static_cast<acc_t>(wb[t]);
    weight_sum = add_weight(weight_sum, wt);
    const scalar_t* xt = xb + t * width;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int64_t ch = ch0 + v * kWarp;
      if (ch < width) acc[v] = add_weighted(acc[v], wt, static_cast<acc_t>(xt[ch]));
    }
  }
  const acc_t denominator = cluster_denominator(weight_sum);
  out_t* o = out + bc * width;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int64_t ch = ch0 + v * kWarp;
    if (ch < width) o[ch] = static_cast<out_t>(merged_value(acc[v], denominator));
  }
  if (total != nullptr && block_c == 0 && lane == 0) total[bc] = weight_sum;
}

// One warp per token (b, t).
template <typename scalar_t, typename acc_t>
__global__ void token_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                      const int64_t* __restrict__ idx, const scalar_t* __restrict__ w,
                                      const acc_t* __restrict__ out, const acc_t* __restrict__ total, int64_t batch,
                                      int64_t n, int64_t width, int64_t num_clusters, scalar_t* __restrict__ grad_x,
                                      scalar_t* __restrict__ grad_w) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (token >= batch * n) return;
  const int64_t b = token / n;
  const int64_t c = idx[token];
  scalar_t* gx = grad_x + token * width;
  if (c < 0 || c >= num_clusters) {  // out of range (bucket_kernel asserts): no cluster, zero gradients
    for (int64_t ch = lane; ch < width; ch += kWarp) gx[ch] = static_cast<scalar_t>(0);
    if (lane == 0) grad_w[token] = static_cast<scalar_t>(0);
    return;
  }
  const int64_t bc = b * num_clusters + c;
  const acc_t denominator = cluster_denominator(total[bc]);
  const acc_t share = token_share(static_cast<acc_t>(w[token]), denominator);
  const scalar_t* g = grad + bc * width;
  const acc_t* oc = out + bc * width;
  const scalar_t* xt = x + token * width;
  acc_t dot = acc_t(0);
  for (int64_t ch = lane; ch < width; ch += kWarp) {
    const acc_t gv = static_cast<acc_t>(g[ch]);
    gx[ch] = static_cast<scalar_t>(grad_x_value(gv, share));
    dot = add_grad_w_term(dot, gv, static_cast<acc_t>(xt[ch]), oc[ch]);
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
  if (lane == 0) grad_w[token] = static_cast<scalar_t>(grad_w_value(dot, denominator));
}

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& idx, const at::Tensor& weight,
                  int64_t num_clusters) {
  TORCH_CHECK(x.defined() && idx.defined() && weight.defined(), op, ": x, idx and weight must be defined tensors");
  TORCH_CHECK(x.is_cuda(), op, " (cuda kernel): x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(idx.device() == x.device(), op, ": idx must be on x's device ", x.device(), ", got ", idx.device());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight must be on x's device ", x.device(), ", got ",
              weight.device());
  hbi::check_merge_args(op, x, idx, weight, num_clusters);
  const int64_t n = x.size(1);
  TORCH_CHECK(n < (int64_t{1} << 31) && num_clusters < (int64_t{1} << 31), op,
              ": N and num_clusters must be below 2^31 (int32 token lists)");
}

int64_t blocks_for(int64_t warps) { return (warps + kWarpsPerBlock - 1) / kWarpsPerBlock; }

// offsets [B, K+1] and order [B, N] (int32) of the stable counting sort.
std::tuple<at::Tensor, at::Tensor> bucket(const at::Tensor& idx, int64_t num_clusters, cudaStream_t stream) {
  const int64_t batch = idx.size(0), n = idx.size(1);
  at::Tensor offsets = at::empty({batch, num_clusters + 1}, idx.options().dtype(at::kInt));
  at::Tensor order = at::empty({batch, n}, idx.options().dtype(at::kInt));
  const size_t shared = static_cast<size_t>(num_clusters + 1) * sizeof(int);
  const size_t limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(shared <= limit, "merge_tokens (cuda kernel): num_clusters must be at most ", limit / sizeof(int) - 1,
              " on this device, got ", num_clusters);
  if (shared > 48 * 1024) {
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(bucket_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
  }
  TORCH_CHECK(batch <= 0x7fffffff, "merge_tokens (cuda kernel): batch too large");
  bucket_kernel<<<static_cast<unsigned>(batch), kWarp, shared, stream>>>(idx.const_data_ptr<int64_t>(), n, num_clusters,
                                                                         offsets.mutable_data_ptr<int32_t>(),
                                                                         order.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {offsets, order};
}

template <typename scalar_t, typename acc_t, typename out_t>
void launch_sums(const at::Tensor& x, const at::Tensor& w, const at::Tensor& offsets, const at::Tensor& order,
                 int64_t num_clusters, out_t* out, acc_t* total, cudaStream_t stream) {
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  auto launch = [&](auto values_per_lane) {
    constexpr int V = decltype(values_per_lane)::value;
    const int64_t channel_blocks = (width + kWarp * V - 1) / (kWarp * V);
    const int64_t blocks = blocks_for(batch * num_clusters * channel_blocks);
    TORCH_CHECK(blocks <= 0x7fffffff, "merge_tokens (cuda kernel): input too large");
    sum_kernel<scalar_t, acc_t, out_t, V><<<static_cast<unsigned>(blocks), kWarp * kWarpsPerBlock, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), offsets.const_data_ptr<int32_t>(),
        order.const_data_ptr<int32_t>(), batch, n, width, num_clusters, channel_blocks, out, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (width <= kWarp) {
    launch(std::integral_constant<int, 1>{});
  } else if (width <= 2 * kWarp) {
    launch(std::integral_constant<int, 2>{});
  } else {
    launch(std::integral_constant<int, 4>{});
  }
}

at::Tensor merge_tokens_cuda(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& weight,
                             int64_t num_clusters) {
  check_inputs("merge_tokens", x, idx, weight, num_clusters);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), width = x.size(2);
  const at::Tensor xc = x.contiguous(), ic = idx.contiguous(), wc = weight.contiguous();
  at::Tensor out = at::empty({batch, num_clusters, width}, x.options());
  if (out.numel() == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto [offsets, order] = bucket(ic, num_clusters, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "merge_tokens_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_sums<scalar_t, acc_t, scalar_t>(xc, wc, offsets, order, num_clusters, out.mutable_data_ptr<scalar_t>(),
                                           static_cast<acc_t*>(nullptr), stream);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_tokens_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                              const at::Tensor& idx, const at::Tensor& weight,
                                                              int64_t num_clusters) {
  check_inputs("merge_tokens_backward", x, idx, weight, num_clusters);
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  TORCH_CHECK(grad.defined() && grad.device() == x.device(),
              "merge_tokens_backward (cuda kernel): grad must be a CUDA tensor on x's device");
  hbi::check_merge_grad(grad, x, num_clusters);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), ic = idx.contiguous(), wc = weight.contiguous();
  const at::Tensor gc = grad.to(x.scalar_type()).contiguous();
  at::Tensor grad_x = at::empty_like(xc);
  at::Tensor grad_w = at::empty_like(wc);
  if (batch == 0 || n == 0) return {grad_x, grad_w};
  if (width == 0) {
    grad_w.zero_();
    return {grad_x, grad_w};
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto [offsets, order] = bucket(ic, num_clusters, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "merge_tokens_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    at::Tensor out = at::empty({batch, num_clusters, width}, x.options().dtype(acc_dtype));
    at::Tensor total = at::empty({batch, num_clusters}, x.options().dtype(acc_dtype));
    launch_sums<scalar_t, acc_t, acc_t>(xc, wc, offsets, order, num_clusters, out.mutable_data_ptr<acc_t>(),
                                        total.mutable_data_ptr<acc_t>(), stream);
    const int64_t blocks = blocks_for(batch * n);
    TORCH_CHECK(blocks <= 0x7fffffff, "merge_tokens_backward (cuda kernel): input too large");
    token_backward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kWarp * kWarpsPerBlock, 0, stream>>>(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), ic.const_data_ptr<int64_t>(),
        wc.const_data_ptr<scalar_t>(), out.const_data_ptr<acc_t>(), total.const_data_ptr<acc_t>(), batch, n, width,
        num_clusters, grad_x.mutable_data_ptr<scalar_t>(), grad_w.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(hbi_ops, CUDA, m) {
  m.impl("merge_tokens", &merge_tokens_cuda);
  m.impl("merge_tokens_backward", &merge_tokens_backward_cuda);
}
