// banzhaf_interaction on the CPU: forward and backward of the exact, paired and msr estimators,
// parallel over pairs. The exact textbook index is the closed form (closed_form_cpu.h); the sampled
// estimators and the exact reference definition (which enumerates) run the CUDA kernel's game of a pair
// with one lane (banzhaf_sampled_cpu.h). The backward pass redraws the coalitions from the seed instead
// of storing them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "banzhaf/banzhaf_args.h"
#include "banzhaf/banzhaf_sampled_cpu.h"
#include "banzhaf/closed_form_cpu.h"

namespace hbi {
namespace {

using banzhaf::Estimator;
using banzhaf::kMaxExactPlayers;
using banzhaf::parse_settings;
using banzhaf::Settings;

void check_inputs(const at::Tensor& sim, const at::Tensor& text_mask, const at::Tensor& video_mask,
                  const at::Tensor& text_weight, const at::Tensor& video_weight) {
  banzhaf::check_shapes(sim, text_mask, video_mask, text_weight, video_weight);
  for (const auto* t : {&sim, &text_mask, &video_mask, &text_weight, &video_weight})
    TORCH_CHECK(t->device().is_cpu(), "banzhaf_interaction: every input must be a CPU tensor");
}

void check_exact_players(const at::Tensor& text_mask, const at::Tensor& video_mask) {
  if (text_mask.size(0) == 0) return;
  const auto players = text_mask.sum(1) + video_mask.sum(1);
  const int64_t worst = players.max().item<int64_t>();
  TORCH_CHECK(worst <= kMaxExactPlayers, "banzhaf_interaction: estimator='exact' takes at most ", kMaxExactPlayers,
              " players per pair, got a pair with ", worst, "; use estimator='paired' or 'msr'");
}

// The inputs of either op, checked, contiguous, masks as bool.
struct PairInputs {
  at::Tensor sim, text_mask, video_mask, text_weight, video_weight;
  int64_t B;
  int T, V;
};

PairInputs prepare_inputs(const at::Tensor& sim, const at::Tensor& text_mask, const at::Tensor& video_mask,
                          const at::Tensor& text_weight, const at::Tensor& video_weight, const Settings& s) {
  check_inputs(sim, text_mask, video_mask, text_weight, video_weight);
  PairInputs in{sim.contiguous(),
                text_mask.to(at::kBool).contiguous(),
                video_mask.to(at::kBool).contiguous(),
                text_weight.contiguous(),
                video_weight.contiguous(),
                sim.size(0),
                static_cast<int>(sim.size(1)),
                static_cast<int>(sim.size(2))};
  if (s.estimator == Estimator::kExact && s.reference) check_exact_players(in.text_mask, in.video_mask);
  return in;
}

// Pair b's inputs: sim [T * V], weights [T] / [V], masks [T] / [V].
template <typename scalar_t>
struct PairPointers {
  const scalar_t *sim, *text_weight, *video_weight;
  const bool *text_mask, *video_mask;
  int T, V;

  explicit PairPointers(const PairInputs& in)
      : sim(in.sim.data_ptr<scalar_t>()),
        text_weight(in.text_weight.data_ptr<scalar_t>()),
        video_weight(in.video_weight.data_ptr<scalar_t>()),
        text_mask(in.text_mask.data_ptr<bool>()),
        video_mask(in.video_mask.data_ptr<bool>()),
        T(in.T),
        V(in.V) {}
  const scalar_t* sim_of(int64_t b) const { return sim + b * T * V; }
  const scalar_t* text_weight_of(int64_t b) const { return text_weight + b * T; }
  const scalar_t* video_weight_of(int64_t b) const { return video_weight + b * V; }
  const bool* text_mask_of(int64_t b) const { return text_mask + b * T; }
  const bool* video_mask_of(int64_t b) const { return video_mask + b * V; }
};

// The exact textbook index (closed form): body(marginals, words, frames, b) for every pair, in
// parallel over pairs, with the pair's real players compacted and its marginals computed.
template <typename scalar_t, typename Body>
void for_each_closed_form_pair(const PairInputs& in, Body&& body) {
  using acc_t = at::opmath_type<scalar_t>;
  const PairPointers<scalar_t> p(in);
  at::parallel_for(0, in.B, 1, [&](int64_t begin, int64_t end) {
    closed_form::PairMarginals<acc_t> pair;
    std::vector<int> words, frames;
    for (int64_t b = begin; b < end; ++b) {
      words.clear();
      frames.clear();
      for (int t = 0; t < in.T; ++t)
        if (p.text_mask_of(b)[t]) words.push_back(t);
      for (int v = 0; v < in.V; ++v)
        if (p.video_mask_of(b)[v]) frames.push_back(v);
      if (words.empty() || frames.empty()) continue;  // no real cell: the output stays 0
      pair.load(p.sim_of(b), p.text_weight_of(b), p.video_weight_of(b), words, frames, in.V);
      pair.compute();
      body(pair, words, frames, b);
    }
  });
}

at::Tensor banzhaf_interaction_cpu(const at::Tensor& sim, const at::Tensor& text_mask, const at::Tensor& video_mask,
                                   const at::Tensor& text_weight, const at::Tensor& video_weight,
                                   c10::string_view definition, c10::string_view estimator, int64_t num_samples,
                                   int64_t seed) {
  const Settings s = parse_settings(definition, estimator, num_samples, seed);
  const PairInputs in = prepare_inputs(sim, text_mask, video_mask, text_weight, video_weight, s);
  const int T = in.T, V = in.V;
  if (!(s.estimator == Estimator::kExact && !s.reference))
    return banzhaf_cuda::sampled_forward(in.sim, in.text_mask, in.video_mask, in.text_weight, in.video_weight, s);
  auto out = at::zeros_like(in.sim);
  if (in.B == 0 || T == 0 || V == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.sim.scalar_type(), "banzhaf_interaction_cpu", [&] {
    scalar_t* out_p = out.data_ptr<scalar_t>();
    for_each_closed_form_pair<scalar_t>(in, [&](const auto& pair, const auto& words, const auto& frames, int64_t b) {
      for (int i = 0; i < pair.n; ++i)
        for (int j = 0; j < pair.m; ++j)
          out_p[(b * T + words[i]) * V + frames[j]] = static_cast<scalar_t>(pair.interaction(i, j));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> banzhaf_interaction_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& sim, const at::Tensor& text_mask, const at::Tensor& video_mask,
    const at::Tensor& text_weight, const at::Tensor& video_weight, c10::string_view definition,
    c10::string_view estimator, int64_t num_samples, int64_t seed) {
  TORCH_CHECK(grad_in.sizes() == sim.sizes(), "banzhaf_interaction_backward: grad must be ", sim.sizes(), ", got ",
              grad_in.sizes());
  const Settings s = parse_settings(definition, estimator, num_samples, seed);
  const PairInputs in = prepare_inputs(sim, text_mask, video_mask, text_weight, video_weight, s);
  const int T = in.T, V = in.V;
  const auto grad = grad_in.to(in.sim.scalar_type()).contiguous();
  if (!(s.estimator == Estimator::kExact && !s.reference))
    return banzhaf_cuda::sampled_backward(grad, in.sim, in.text_mask, in.video_mask, in.text_weight, in.video_weight,
                                          s);
  auto grad_sim = at::zeros_like(in.sim);
  auto grad_wt = at::zeros_like(in.text_weight);
  auto grad_wv = at::zeros_like(in.video_weight);
  if (in.B == 0 || T == 0 || V == 0) return {grad_sim, grad_wt, grad_wv};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.sim.scalar_type(), "banzhaf_interaction_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* grad_p = grad.data_ptr<scalar_t>();
        scalar_t* gs_p = grad_sim.data_ptr<scalar_t>();
        scalar_t* gt_p = grad_wt.data_ptr<scalar_t>();
        scalar_t* gv_p = grad_wv.data_ptr<scalar_t>();
        for_each_closed_form_pair<scalar_t>(
            in, [&](const auto& pair, const auto& words, const auto& frames, int64_t b) {
              const int n = pair.n, m = pair.m;
              std::vector<acc_t> G(n * m), g_sim(n * m, acc_t(0)), g_wt(n, acc_t(0)), g_wv(m, acc_t(0));
              for (int i = 0; i < n; ++i)
                for (int j = 0; j < m; ++j)
                  G[i * m + j] = static_cast<acc_t>(grad_p[(b * T + words[i]) * V + frames[j]]);
              pair.backward(G, g_sim, g_wt, g_wv);
              for (int i = 0; i < n; ++i) {
                gt_p[b * T + words[i]] = static_cast<scalar_t>(g_wt[i]);
                for (int j = 0; j < m; ++j)
                  gs_p[(b * T + words[i]) * V + frames[j]] = static_cast<scalar_t>(g_sim[i * m + j]);
              }
              for (int j = 0; j < m; ++j) gv_p[b * V + frames[j]] = static_cast<scalar_t>(g_wv[j]);
            });
      });
  return {grad_sim, grad_wt, grad_wv};
}

}  // namespace
}  // namespace hbi

TORCH_LIBRARY_IMPL(hbi_ops, CPU, m) {
  m.impl("banzhaf_interaction", &hbi::banzhaf_interaction_cpu);
  m.impl("banzhaf_interaction_backward", &hbi::banzhaf_interaction_backward_cpu);
}
