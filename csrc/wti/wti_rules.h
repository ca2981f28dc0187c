// The per-element rules of wti_similarity (docs/wti.md) that the CPU kernel (wti_cpu.cpp) and the CUDA
// kernels (wti_epilogue.cuh, wti_forward_fused.cuh) both call: the maximum and its arg-max (the first maximal
// entry) and the padding rule that says when a maximum is not a real entry.
#pragma once
#include <cstdint>
#include <limits>

#include "common/host_device.h"

namespace hbi {
namespace wti {

// value replaces the running maximum best: strictly greater, so on ties the first (lowest index) entry stays.
template <typename acc_t>
HBI_HD bool beats(acc_t value, acc_t best) {
  return value > best;
}

// The first maximum of value(i) over the real i < count (real(i)); best = -inf and -1 when none beats -inf.
template <typename index_t, typename acc_t, typename Value, typename Real>
HBI_HD index_t first_max(index_t count, const Value& value, const Real& real, acc_t& best) {
  best = -std::numeric_limits<acc_t>::infinity();
  index_t arg = -1;
  for (index_t i = 0; i < count; ++i) {  // selects, not branches: the CPU loop stays branch-free
    const bool take = real(i) && beats(value(i), best);
    best = take ? value(i) : best;
    arg = take ? i : arg;
  }
  return arg;
}

// In zero-padding mode a masked 0 competes in a maximum when the other side has a padded position.
HBI_HD bool zero_competes(bool zero_padding, int64_t real_count, int64_t length) {
  return zero_padding && real_count < length;
}

// The maximum (arg, best) is a real entry: there is one, and no competing masked 0 beats it.
template <typename index_t, typename acc_t>
HBI_HD bool kept_maximum(index_t arg, acc_t best, bool zero_in) {
  return arg >= 0 && !(zero_in && best < 0);
}

}  // namespace wti
}  // namespace hbi
