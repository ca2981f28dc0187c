// Shape and dtype checks of merge_tokens (forward and backward) shared by its CPU and CUDA kernels
// (each adds its device check).
#pragma once
#include <ATen/ATen.h>

namespace hbi {

inline void check_merge_args(const char* op, const at::Tensor& x, const at::Tensor& idx, const at::Tensor& weight,
                             int64_t num_clusters) {
  TORCH_CHECK(x.dim() == 3, op, ": x must have 3 dimensions [B, N, C], got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": x must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", x.scalar_type());
  const int64_t batch = x.size(0), n = x.size(1);
  TORCH_CHECK(idx.scalar_type() == at::kLong, op, ": idx must be an int64 tensor, got ", idx.scalar_type());
  TORCH_CHECK(idx.dim() == 2 && idx.size(0) == batch && idx.size(1) == n, op, ": idx must have shape [", batch, ", ", n,
              "], got ", idx.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype ", x.scalar_type(), ", got ",
              weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == batch && weight.size(1) == n, op, ": weight must have shape [",
              batch, ", ", n, "], got ", weight.sizes());
  TORCH_CHECK(num_clusters >= 1, op, ": num_clusters must be >= 1, got ", num_clusters);
}

// The backward's grad [B, K, C], after check_merge_args and the caller's device check of grad.
inline void check_merge_grad(const at::Tensor& grad, const at::Tensor& x, int64_t num_clusters) {
  const int64_t batch = x.size(0), width = x.size(2);
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()),
              "merge_tokens_backward: grad must be a floating-point tensor, got ", grad.scalar_type());
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == batch && grad.size(1) == num_clusters && grad.size(2) == width,
              "merge_tokens_backward: grad must have shape [", batch, ", ", num_clusters, ", ", width, "], got ",
              grad.sizes());
}

}  // namespace hbi
