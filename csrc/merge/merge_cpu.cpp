// CPU kernels of hbi_ops::merge_tokens and hbi_ops::merge_tokens_backward (docs/merge.md).
//
//   W[c]   = sum_{n: idx_n = c} w_n
//   out[c] = sum_{n: idx_n = c} w_n x_n / (W[c] + 1e-6)
//   grad_x[n] = grad[c] * w_n / (W[c] + 1e-6)                       (c = idx_n)
//   grad_w[n] = <grad[c], x_n - out[c]> / (W[c] + 1e-6)
//
// One sample per task of at::parallel_for; every sample owns its output rows, so no atomics. Sums run in
// at::opmath_type (float for float16 / bfloat16, double for float64); the backward recomputes W and out in
// that type instead of saving the rounded output. Every idx value is checked to lie in [0, K) before
// anything is written. The per-element steps are those of merge_rules.h, which the CUDA kernels call too.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "merge/merge_args.h"
#include "merge/merge_rules.h"

namespace {

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& idx, const at::Tensor& weight,
                  int64_t num_clusters) {
  TORCH_CHECK(x.defined() && idx.defined() && weight.defined(), op, ": x, idx and weight must be defined tensors");
  TORCH_CHECK(x.device().is_cpu(), op, " (cpu kernel): x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(idx.device().is_cpu(), op, " (cpu kernel): idx must be a CPU tensor, got ", idx.device());
  TORCH_CHECK(weight.device().is_cpu(), op, " (cpu kernel): weight must be a CPU tensor, got ", weight.device());
  hbi::check_merge_args(op, x, idx, weight, num_clusters);
}

// idx must be contiguous int64; an out-of-range value is an error, never a write out of bounds.
void check_idx_range(const char* op, const at::Tensor& idx, int64_t num_clusters) {
  const int64_t* data = idx.const_data_ptr<int64_t>();
  const int64_t total = idx.numel(), n = idx.size(1);
  for (int64_t e = 0; e < total; ++e) {
    TORCH_CHECK(data[e] >= 0 && data[e] < num_clusters, op, ": idx must hold cluster indices in [0, ", num_clusters - 1,
                "] (num_clusters=", num_clusters, "), got idx[", e / n, ", ", e % n, "] = ", data[e]);
  }
}

int64_t grain(int64_t per_sample_work) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, per_sample_work));
}

// W [K] and S [K, C] of one sample, in acc_t.
template <typename scalar_t, typename acc_t>
void weighted_sums(const scalar_t* __restrict__ x, const int64_t* __restrict__ idx, const scalar_t* __restrict__ w,
                   int64_t n, int64_t width, acc_t* __restrict__ total, acc_t* __restrict__ summed,
                   int64_t num_clusters) {
  std::fill(total, total + num_clusters, acc_t(0));
  std::fill(summed, summed + num_clusters * width, acc_t(0));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t c = idx[t];
    const acc_t wt = static_cast<acc_t>(w[t]);
    total[c] = hbi::merge::add_weight(total[c], wt);
    acc_t* __restrict__ row = summed + c * width;
    const scalar_t* __restrict__ xt = x + t * width;
    for (int64_t ch = 0; ch < width; ++ch) row[ch] = hbi::merge::add_weighted(row[ch], wt, static_cast<acc_t>(xt[ch]));
  }
}

at::Tensor merge_tokens_cpu(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& weight,
                            int64_t num_clusters) {
  check_inputs("merge_tokens", x, idx, weight, num_clusters);
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  const at::Tensor xc = x.contiguous(), ic = idx.contiguous(), wc = weight.contiguous();
  check_idx_range("merge_tokens", ic, num_clusters);
  at::Tensor out = at::empty({batch, num_clusters, width}, x.options());
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "merge_tokens_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_data = xc.const_data_ptr<scalar_t>();
    const scalar_t* w_data = wc.const_data_ptr<scalar_t>();
    const int64_t* idx_data = ic.const_data_ptr<int64_t>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, grain((n + num_clusters) * width), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> total(num_clusters), summed(num_clusters * width);
      for (int64_t b = begin; b < end; ++b) {
        weighted_sums<scalar_t, acc_t>(x_data + b * n * width, idx_data + b * n, w_data + b * n, n, width, total.data(),
                                       summed.data(), num_clusters);
        scalar_t* o = out_data + b * num_clusters * width;
        for (int64_t c = 0; c < num_clusters; ++c) {
          const acc_t denominator = hbi::merge::cluster_denominator(total[c]);
          for (int64_t ch = 0; ch < width; ++ch)
            o[c * width + ch] = static_cast<scalar_t>(hbi::merge::merged_value(summed[c * width + ch], denominator));
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> merge_tokens_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                             const at::Tensor& idx, const at::Tensor& weight,
                                                             int64_t num_clusters) {
  check_inputs("merge_tokens_backward", x, idx, weight, num_clusters);
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  TORCH_CHECK(grad.defined() && grad.device().is_cpu(),
              "merge_tokens_backward (cpu kernel): grad must be a CPU tensor");
  hbi::check_merge_grad(grad, x, num_clusters);

  const at::Tensor xc = x.contiguous(), ic = idx.contiguous(), wc = weight.contiguous();
  const at::Tensor gc = grad.to(x.scalar_type()).contiguous();
  check_idx_range("merge_tokens_backward", ic, num_clusters);
  at::Tensor grad_x = at::empty_like(xc);
  at::Tensor grad_w = at::empty_like(wc);
  if (batch == 0 || n == 0) return {grad_x, grad_w};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "merge_tokens_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_data = xc.const_data_ptr<scalar_t>();
    const scalar_t* w_data = wc.const_data_ptr<scalar_t>();
    const scalar_t* g_data = gc.const_data_ptr<scalar_t>();
    const int64_t* idx_data = ic.const_data_ptr<int64_t>();
    scalar_t* gx_data = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* gw_data = grad_w.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, grain((2 * n + num_clusters) * width), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> total(num_clusters), summed(num_clusters * width);
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* xb = x_data + b * n * width;
        const scalar_t* wb = w_data + b * n;
        const int64_t* ib = idx_data + b * n;
        const scalar_t* gb = g_data + b * num_clusters * width;
        weighted_sums<scalar_t, acc_t>(xb, ib, wb, n, width, total.data(), summed.data(), num_clusters);
        for (int64_t c = 0; c < num_clusters; ++c) {  // summed -> out
          const acc_t denominator = hbi::merge::cluster_denominator(total[c]);
          for (int64_t ch = 0; ch < width; ++ch)
            summed[c * width + ch] = hbi::merge::merged_value(summed[c * width + ch], denominator);
        }
        for (int64_t t = 0; t < n; ++t) {
          const int64_t c = ib[t];
          const acc_t denominator = hbi::merge::cluster_denominator(total[c]);
          const acc_t share = hbi::merge::token_share(static_cast<acc_t>(wb[t]), denominator);
          const scalar_t* xt = xb + t * width;
          const scalar_t* gct = gb + c * width;
          const acc_t* out_c = summed.data() + c * width;
          scalar_t* gxt = gx_data + (b * n + t) * width;
          acc_t dot = 0;
          for (int64_t ch = 0; ch < width; ++ch) {
            const acc_t g = static_cast<acc_t>(gct[ch]);
            gxt[ch] = static_cast<scalar_t>(hbi::merge::grad_x_value(g, share));
            dot = hbi::merge::add_grad_w_term(dot, g, static_cast<acc_t>(xt[ch]), out_c[ch]);
          }
          gw_data[b * n + t] = static_cast<scalar_t>(hbi::merge::grad_w_value(dot, denominator));
        }
      }
    });
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(hbi_ops, CPU, m) {
  m.impl("merge_tokens", &merge_tokens_cpu);
  m.impl("merge_tokens_backward", &merge_tokens_backward_cpu);
}
