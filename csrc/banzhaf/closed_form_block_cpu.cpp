// hbi_ops::closed_form_block_{forward,backward} on CPU tensors: the CUDA kernel's code
// (closed_form_block.h) run by one thread a pair, so that the tests check the GPU's phases, indexing and
// workspace layout without a GPU. Only the parallel execution (races, barriers) is left to the device.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "banzhaf/banzhaf_args.h"
#include "banzhaf/closed_form_block.h"

namespace hbi {
namespace closed_form {
namespace {

// The block policy of closed_form_block.h with one thread: barriers and reductions are identities.
struct SerialBlock {
  static constexpr int size = 1;
  static int tid() { return 0; }
  static void sync() {}
  template <typename T>
  static T reduce_max(T x, T*) {
    return x;
  }
};

// One pair at a time per worker, each with its own "shared memory".
template <typename acc_t, typename Body>
void for_each_block(int64_t B, int T, int V, Body&& body) {
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<unsigned char> raw(shared_bytes<acc_t>(T, V, 1));
    std::vector<int> words(kMaxPlayers), frames(kMaxPlayers), counts(2);
    acc_t* smem = reinterpret_cast<acc_t*>(raw.data());
    acc_t* values = smem + kFactorBytes / sizeof(acc_t);
    const BlockShared<acc_t> sh{smem, values, values + 2 * larger(T, V), words.data(), frames.data(), counts.data()};
    for (int64_t b = begin; b < end; ++b) body(b, sh);
  });
}

void check(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
           const at::Tensor& wv) {
  banzhaf::check_shapes(sim, tm, vm, wt, wv);
  TORCH_CHECK(sim.size(1) <= kMaxPlayers && sim.size(2) <= kMaxPlayers, "closed_form_block: at most ", kMaxPlayers,
              " words and frames a pair");
}

at::Tensor block_forward_cpu(const at::Tensor& sim_in, const at::Tensor& tm_in, const at::Tensor& vm_in,
                             const at::Tensor& wt_in, const at::Tensor& wv_in) {
  check(sim_in, tm_in, vm_in, wt_in, wv_in);
  const auto sim = sim_in.contiguous(), wt = wt_in.contiguous(), wv = wv_in.contiguous();
  const auto tm = tm_in.to(at::kBool).contiguous(), vm = vm_in.to(at::kBool).contiguous();
  const int64_t B = sim.size(0);
  const int T = static_cast<int>(sim.size(1)), V = static_cast<int>(sim.size(2));
  auto out = at::zeros_like(sim);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sim.scalar_type(), "closed_form_block_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> ws(B * workspace(T, V, false).stride);
    for_each_block<acc_t>(B, T, V, [&](int64_t b, const BlockShared<acc_t>& sh) {
      pair_forward<SerialBlock>(sim.data_ptr<scalar_t>(), tm.data_ptr<bool>(), vm.data_ptr<bool>(),
                                wt.data_ptr<scalar_t>(), wv.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), ws.data(),
                                b, T, V, sh);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_backward_cpu(const at::Tensor& grad_in, const at::Tensor& sim_in,
                                                                  const at::Tensor& tm_in, const at::Tensor& vm_in,
                                                                  const at::Tensor& wt_in, const at::Tensor& wv_in) {
  check(sim_in, tm_in, vm_in, wt_in, wv_in);
  TORCH_CHECK(grad_in.sizes() == sim_in.sizes(), "closed_form_block_backward: grad must be ", sim_in.sizes());
  const auto sim = sim_in.contiguous(), wt = wt_in.contiguous(), wv = wv_in.contiguous();
  const auto grad = grad_in.to(sim.scalar_type()).contiguous();
  const auto tm = tm_in.to(at::kBool).contiguous(), vm = vm_in.to(at::kBool).contiguous();
  const int64_t B = sim.size(0);
  const int T = static_cast<int>(sim.size(1)), V = static_cast<int>(sim.size(2));
  auto grad_sim = at::zeros_like(sim);
  auto grad_wt = at::zeros_like(wt);
  auto grad_wv = at::zeros_like(wv);
  if (sim.numel() == 0) return {grad_sim, grad_wt, grad_wv};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sim.scalar_type(), "closed_form_block_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> ws(B * workspace(T, V, true).stride);
    for_each_block<acc_t>(B, T, V, [&](int64_t b, const BlockShared<acc_t>& sh) {
      pair_backward<SerialBlock>(grad.data_ptr<scalar_t>(), sim.data_ptr<scalar_t>(), tm.data_ptr<bool>(),
                                 vm.data_ptr<bool>(), wt.data_ptr<scalar_t>(), wv.data_ptr<scalar_t>(),
                                 grad_sim.data_ptr<scalar_t>(), grad_wt.data_ptr<scalar_t>(),
                                 grad_wv.data_ptr<scalar_t>(), ws.data(), b, T, V, sh);
    });
  });
  return {grad_sim, grad_wt, grad_wv};
}

}  // namespace
}  // namespace closed_form
}  // namespace hbi

TORCH_LIBRARY_IMPL(hbi_ops, CPU, m) {
  m.impl("closed_form_block_forward", &hbi::closed_form::block_forward_cpu);
  m.impl("closed_form_block_backward", &hbi::closed_form::block_backward_cpu);
}
