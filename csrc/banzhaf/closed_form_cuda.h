// The closed-form textbook estimator on CUDA (closed_form_cuda.cu), called by banzhaf_launch_cuda.cu's ops.
// Inputs contiguous, masks bool, all on one CUDA device (checked by the caller).
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace hbi {
namespace closed_form {

at::Tensor forward_cuda(const at::Tensor& sim, const at::Tensor& text_mask, const at::Tensor& video_mask,
                        const at::Tensor& text_weight, const at::Tensor& video_weight);

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad, const at::Tensor& sim,
                                                             const at::Tensor& text_mask, const at::Tensor& video_mask,
                                                             const at::Tensor& text_weight,
                                                             const at::Tensor& video_weight);

}  // namespace closed_form
}  // namespace hbi
