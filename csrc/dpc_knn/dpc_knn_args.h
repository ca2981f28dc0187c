// Shape, dtype and range checks of dpc_knn shared by its CPU and CUDA kernels (each adds its device check).
#pragma once
#include <ATen/ATen.h>

namespace hbi {

inline void check_dpc_knn_args(const at::Tensor& x, const at::Tensor& mask, int64_t num_clusters, int64_t k) {
  TORCH_CHECK(x.dim() == 3, "dpc_knn: x must have 3 dimensions [B, N, C], got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "dpc_knn: x must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
              x.scalar_type());
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == batch && mask.size(1) == n, "dpc_knn: mask must have shape [", batch,
              ", ", n, "], got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool || at::isIntegralType(mask.scalar_type(), /*includeBool=*/false),
              "dpc_knn: mask must be a bool or integer tensor, got ", mask.scalar_type());
  TORCH_CHECK(num_clusters >= 1 && num_clusters <= n, "dpc_knn: num_clusters must be in [1, N=", n, "], got ",
              num_clusters);
  TORCH_CHECK(k >= 1 && k <= n, "dpc_knn: k must be in [1, N=", n, "], got ", k);
  TORCH_CHECK(width >= 1, "dpc_knn: x must have at least one feature (C >= 1), got shape ", x.sizes());
}

}  // namespace hbi
