// Arguments of banzhaf_interaction shared by its CPU and CUDA kernels: the settings parsed from the
// schema's strings, and the shape and dtype checks (each backend adds its own device check).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace hbi {
namespace banzhaf {

constexpr int kMaxExactPlayers = 24;
enum class Estimator { kExact, kPaired, kMsr };

struct Settings {
  bool reference;
  Estimator estimator;
  int64_t num_samples;
  uint64_t seed;
};

inline Settings parse_settings(c10::string_view definition, c10::string_view estimator, int64_t num_samples,
                               int64_t seed) {
  Settings s;
  TORCH_CHECK(definition == "textbook" || definition == "reference",
              "banzhaf_interaction: definition must be 'textbook' or 'reference', got '", std::string(definition), "'");
  s.reference = definition == "reference";
  if (estimator == "exact")
    s.estimator = Estimator::kExact;
  else if (estimator == "paired")
    s.estimator = Estimator::kPaired;
  else if (estimator == "msr")
    s.estimator = Estimator::kMsr;
  else
    TORCH_CHECK(false, "banzhaf_interaction: estimator must be 'exact', 'paired' or 'msr', got '",
                std::string(estimator), "'");
  TORCH_CHECK(!(s.reference && s.estimator == Estimator::kMsr),
              "banzhaf_interaction: estimator='msr' is not defined for definition='reference'");
  TORCH_CHECK(num_samples >= 1 && num_samples <= INT32_MAX,
              "banzhaf_interaction: num_samples must be in [1, 2^31 - 1], got ", num_samples);
  s.num_samples = num_samples;
  s.seed = static_cast<uint64_t>(seed);  // the schema's int64 carries the uint64 seed
  return s;
}

inline void check_shapes(const at::Tensor& sim, const at::Tensor& text_mask, const at::Tensor& video_mask,
                         const at::Tensor& text_weight, const at::Tensor& video_weight) {
  TORCH_CHECK(sim.dim() == 3, "banzhaf_interaction: sim must be [B, T, V], got ", sim.sizes());
  TORCH_CHECK(at::isFloatingType(sim.scalar_type()), "banzhaf_interaction: sim must be floating point");
  const auto B = sim.size(0), T = sim.size(1), V = sim.size(2);
  TORCH_CHECK(text_mask.sizes() == at::IntArrayRef({B, T}), "banzhaf_interaction: text_mask must be [", B, ", ", T,
              "], got ", text_mask.sizes());
  TORCH_CHECK(video_mask.sizes() == at::IntArrayRef({B, V}), "banzhaf_interaction: video_mask must be [", B, ", ", V,
              "], got ", video_mask.sizes());
  TORCH_CHECK(text_weight.sizes() == at::IntArrayRef({B, T}), "banzhaf_interaction: text_weight must be [", B, ", ", T,
              "], got ", text_weight.sizes());
  TORCH_CHECK(video_weight.sizes() == at::IntArrayRef({B, V}), "banzhaf_interaction: video_weight must be [", B, ", ",
              V, "], got ", video_weight.sizes());
  TORCH_CHECK(text_weight.scalar_type() == sim.scalar_type() && video_weight.scalar_type() == sim.scalar_type(),
              "banzhaf_interaction: text_weight and video_weight must have sim's dtype");
}

}  // namespace banzhaf
}  // namespace hbi
