// Philox4x32-10 (Salmon et al., SC'11) and the coalition rule of docs/banzhaf.md.
// Shared by the C++ and CUDA kernels so that one seed gives the same coalitions everywhere.
#pragma once
#include <cstdint>

#include "common/host_device.h"

namespace hbi {

struct Philox4 {
  uint32_t v[4];
};

HBI_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Ten rounds of Philox4x32 on counter c with key (k0, k1).
HBI_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(M0, c0, hi0, lo0);
    philox_mulhilo(M1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Draws the coalition bits of one (sample, pair): player k (words 0..T-1, then frames 0..V-1)
// is in when bit (k mod 32) of word ((k div 32) mod 4) of
// Philox(counter = (sample, pair, k div 128, 0), key = (seed lo, seed hi)) is 1.
// `bits` receives ceil(num_players / 32) words; bit k of the concatenation is player k.
HBI_HD void coalition_bits(uint64_t seed, uint32_t sample, uint32_t pair, int num_players, uint32_t* bits) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const int num_words = (num_players + 31) / 32;
  for (int block = 0; block * 4 < num_words; ++block) {
    const Philox4 r = philox4x32_10(sample, pair, static_cast<uint32_t>(block), 0u, k0, k1);
    for (int w = 0; w < 4 && block * 4 + w < num_words; ++w) bits[block * 4 + w] = r.v[w];
  }
}

HBI_HD bool coalition_has(const uint32_t* bits, int player) { return (bits[player >> 5] >> (player & 31)) & 1u; }

}  // namespace hbi
