// The CPU kernel of the sampled estimators and of the exact reference definition (banzhaf_sampled_cpu.cpp):
// the CUDA kernel's game of a pair run with one lane. Inputs checked by the caller: contiguous, masks bool.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "banzhaf/banzhaf_args.h"

namespace hbi {
namespace banzhaf_cuda {

at::Tensor sampled_forward(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
                           const at::Tensor& wv, const banzhaf::Settings& s);

// grad: contiguous, of sim's dtype and shape.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_backward(const at::Tensor& grad, const at::Tensor& sim,
                                                                const at::Tensor& tm, const at::Tensor& vm,
                                                                const at::Tensor& wt, const at::Tensor& wv,
                                                                const banzhaf::Settings& s);

}  // namespace banzhaf_cuda
}  // namespace hbi
