// banzhaf_interaction on the CPU: forward and backward of the exact, paired and msr estimators,
// parallel over pairs. The exact textbook index is the closed form (closed_form_cpu.h); the exact
// reference definition enumerates. The backward pass redraws the coalitions from the seed instead of
// storing them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "banzhaf/banzhaf_args.h"
#include "banzhaf/banzhaf_game.h"
#include "banzhaf/closed_form_cpu.h"
#include "philox.h"

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

template <typename acc_t>
using Game = PairGame<acc_t>;

// Sets the game's coalition to subset `code` of its real players (words first, then frames).
template <typename acc_t>
void set_subset(Game<acc_t>& game, const std::vector<int>& player_of_position, uint32_t code) {
  game.set_coalition([&](int position) {
    const int player = player_of_position[position];
    return player >= 0 && ((code >> player) & 1u);
  });
}

template <typename acc_t>
std::vector<int> players_by_position(const Game<acc_t>& game, int T, int V) {
  std::vector<int> player(T + V, -1);
  int next = 0;
  for (int t : game.real_words()) player[t] = next++;
  for (int v : game.real_frames()) player[T + v] = next++;
  return player;
}

// Per-stratum totals of the msr estimator (word i in, frame j in, both): sample counts or value sums.
struct MsrStrata {
  std::vector<double> word, frame, both;
};

// Adds `value` to the strata the game's current coalition falls in: word i in, frame j in, both.
// With value 1 this counts samples; with value f(S) it sums the coalition values.
template <typename acc_t>
void add_to_strata(const Game<acc_t>& game, MsrStrata& strata, double value, int V) {
  for (int i : game.real_words()) {
    if (!game.word_in(i)) continue;
    strata.word[i] += value;
    for (int j : game.real_frames())
      if (game.frame_in(j)) strata.both[i * V + j] += value;
  }
  for (int j : game.real_frames())
    if (game.frame_in(j)) strata.frame[j] += value;
}

MsrStrata empty_strata(int T, int V) {
  return MsrStrata{std::vector<double>(T, 0), std::vector<double>(V, 0), std::vector<double>(T * V, 0)};
}

template <typename acc_t>
MsrStrata msr_counts(Game<acc_t>& game, const Settings& s, uint32_t pair, int T, int V, std::vector<uint32_t>& bits) {
  MsrStrata c = empty_strata(T, V);
  for (int64_t sample = 0; sample < s.num_samples; ++sample) {
    coalition_bits(s.seed, static_cast<uint32_t>(sample), pair, T + V, bits.data());
    game.set_coalition_bits(bits.data());
    add_to_strata(game, c, 1.0, V);
  }
  return c;
}

// Weight of one sample's value in cell (i, j) of the msr estimate: +-1 / (size of its stratum).
inline double msr_weight(const MsrStrata& c, double num_samples, bool word_in, bool frame_in, int i, int j, int V) {
  const double both = c.both[i * V + j];
  double count;
  if (word_in && frame_in)
    count = both;
  else if (word_in)
    count = c.word[i] - both;
  else if (frame_in)
    count = c.frame[j] - both;
  else
    count = num_samples - c.word[i] - c.frame[j] + both;
  return (word_in == frame_in ? 1.0 : -1.0) / count;
}

template <typename acc_t>
void forward_pair(Game<acc_t>& game, const Settings& s, uint32_t pair, int T, int V, double* out) {
  const auto& words = game.real_words();
  const auto& frames = game.real_frames();
  std::fill(out, out + T * V, 0.0);
  if (words.empty() || frames.empty()) return;
  std::vector<uint32_t> bits((T + V + 127) / 128 * 4);
  if (s.estimator == Estimator::kPaired) {
    for (int64_t sample = 0; sample < s.num_samples; ++sample) {
      coalition_bits(s.seed, static_cast<uint32_t>(sample), pair, T + V, bits.data());
      game.set_coalition_bits(bits.data());
      if (s.reference) {
        for (int i : words)
          for (int j : frames) out[i * V + j] += game.template cell_delta<false>(i, j, true);
      } else {
        game.prepare_cells();
        for (int i : words)
          for (int j : frames) out[i * V + j] += game.cell_delta_fast(i, j);
      }
    }
    for (int k = 0; k < T * V; ++k) out[k] /= static_cast<double>(s.num_samples);
  } else if (s.estimator == Estimator::kMsr) {
    MsrStrata sums = empty_strata(T, V), c = empty_strata(T, V);
    double sum_all = 0;
    for (int64_t sample = 0; sample < s.num_samples; ++sample) {
      coalition_bits(s.seed, static_cast<uint32_t>(sample), pair, T + V, bits.data());
      game.set_coalition_bits(bits.data());
      const double f = game.template value_of<false>(-1, -1, false, false, false);
      sum_all += f;
      add_to_strata(game, sums, f, V);
      add_to_strata(game, c, 1.0, V);
    }
    const double n = static_cast<double>(s.num_samples);
    auto mean = [](double total, double count) { return count > 0 ? total / count : 0.0; };
    for (int i : words)
      for (int j : frames) {
        const double both = sums.both[i * V + j], count_both = c.both[i * V + j];
        out[i * V + j] = mean(both, count_both) - mean(sums.word[i] - both, c.word[i] - count_both) -
                         mean(sums.frame[j] - both, c.frame[j] - count_both) +
                         mean(sum_all - sums.word[i] - sums.frame[j] + both, n - c.word[i] - c.frame[j] + count_both);
      }
  } else {  // exact, reference definition (the textbook one has its closed form): every c of N \ {i, j} once
    const int n = game.num_players();
    const auto player_of_position = players_by_position(game, T, V);
    const uint32_t num_subsets = 1u << n;
    for (uint32_t code = 0; code < num_subsets; ++code) {
      set_subset(game, player_of_position, code);
      for (int i : words) {
        if (game.word_in(i)) continue;
        for (int j : frames)
          if (!game.frame_in(j)) out[i * V + j] += game.template cell_delta<false>(i, j, true);
      }
    }
    const double scale = 1.0 / (num_subsets >> 2);
    for (int k = 0; k < T * V; ++k) out[k] *= scale;
  }
}

template <typename acc_t>
void backward_pair(Game<acc_t>& game, const Settings& s, uint32_t pair, int T, int V, const acc_t* grad,
                   GameGrads<acc_t>* grads) {
  const auto& words = game.real_words();
  const auto& frames = game.real_frames();
  if (words.empty() || frames.empty()) return;
  std::vector<uint32_t> bits((T + V + 127) / 128 * 4);
  if (s.estimator == Estimator::kPaired) {
    const acc_t per_sample = acc_t(1) / static_cast<acc_t>(s.num_samples);
    for (int64_t sample = 0; sample < s.num_samples; ++sample) {
      coalition_bits(s.seed, static_cast<uint32_t>(sample), pair, T + V, bits.data());
      game.set_coalition_bits(bits.data());
      for (int i : words)
        for (int j : frames) {
          const acc_t g = grad[i * V + j] * per_sample;
          if (g != acc_t(0)) game.template cell_delta<true>(i, j, s.reference, g, grads);
        }
    }
  } else if (s.estimator == Estimator::kMsr) {
    const MsrStrata c = msr_counts(game, s, pair, T, V, bits);
    const double n = static_cast<double>(s.num_samples);
    for (int64_t sample = 0; sample < s.num_samples; ++sample) {
      coalition_bits(s.seed, static_cast<uint32_t>(sample), pair, T + V, bits.data());
      game.set_coalition_bits(bits.data());
      double scale = 0;  // d estimate / d f(S_sample), contracted with the incoming gradient
      for (int i : words)
        for (int j : frames) scale += grad[i * V + j] * msr_weight(c, n, game.word_in(i), game.frame_in(j), i, j, V);
      game.template value_of<true>(-1, -1, false, false, false, static_cast<acc_t>(scale), grads);
    }
  } else {  // exact, reference definition
    const int n = game.num_players();
    const auto player_of_position = players_by_position(game, T, V);
    const uint32_t num_subsets = 1u << n;
    const acc_t per_c = acc_t(1) / static_cast<acc_t>(num_subsets >> 2);
    for (uint32_t code = 0; code < num_subsets; ++code) {
      set_subset(game, player_of_position, code);
      for (int i : words) {
        if (game.word_in(i)) continue;
        for (int j : frames) {
          const acc_t g = grad[i * V + j] * per_c;
          if (!game.frame_in(j) && g != acc_t(0)) game.template cell_delta<true>(i, j, true, g, grads);
        }
      }
    }
  }
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

// Runs body(game, b) for every pair, in parallel over pairs, with pair b loaded into a game.
template <typename scalar_t, typename Body>
void for_each_pair(const PairInputs& in, Body&& body) {
  using acc_t = at::opmath_type<scalar_t>;
  const PairPointers<scalar_t> p(in);
  at::parallel_for(0, in.B, 1, [&](int64_t begin, int64_t end) {
    Game<acc_t> game(in.T, in.V);
    for (int64_t b = begin; b < end; ++b) {
      game.load(p.sim_of(b), p.text_weight_of(b), p.video_weight_of(b), p.text_mask_of(b), p.video_mask_of(b));
      body(game, b);
    }
  });
}

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
  auto out = at::zeros_like(in.sim);
  if (in.B == 0 || T == 0 || V == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.sim.scalar_type(), "banzhaf_interaction_cpu", [&] {
    scalar_t* out_p = out.data_ptr<scalar_t>();
    if (s.estimator == Estimator::kExact && !s.reference) {
      for_each_closed_form_pair<scalar_t>(in, [&](const auto& pair, const auto& words, const auto& frames, int64_t b) {
        for (int i = 0; i < pair.n; ++i)
          for (int j = 0; j < pair.m; ++j)
            out_p[(b * T + words[i]) * V + frames[j]] = static_cast<scalar_t>(pair.interaction(i, j));
      });
      return;
    }
    for_each_pair<scalar_t>(in, [&](auto& game, int64_t b) {
      std::vector<double> pair_out(T * V);
      forward_pair(game, s, static_cast<uint32_t>(b), T, V, pair_out.data());
      for (int k = 0; k < T * V; ++k) out_p[b * T * V + k] = static_cast<scalar_t>(pair_out[k]);
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
        if (s.estimator == Estimator::kExact && !s.reference) {
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
          return;
        }
        for_each_pair<scalar_t>(in, [&](auto& game, int64_t b) {
          std::vector<acc_t> g_in(T * V), g_sim(T * V, acc_t(0)), g_wt(T, acc_t(0)), g_wv(V, acc_t(0));
          for (int k = 0; k < T * V; ++k) g_in[k] = static_cast<acc_t>(grad_p[b * T * V + k]);
          GameGrads<acc_t> grads{g_sim.data(), g_wt.data(), g_wv.data()};
          backward_pair(game, s, static_cast<uint32_t>(b), T, V, g_in.data(), &grads);
          for (int k = 0; k < T * V; ++k) gs_p[b * T * V + k] = static_cast<scalar_t>(g_sim[k]);
          for (int t = 0; t < T; ++t) gt_p[b * T + t] = static_cast<scalar_t>(g_wt[t]);
          for (int v = 0; v < V; ++v) gv_p[b * V + v] = static_cast<scalar_t>(g_wv[v]);
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
