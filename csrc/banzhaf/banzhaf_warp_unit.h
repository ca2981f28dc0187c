// One coalition ("unit") of the cells kernel for one warp: membership, state, then the mode's loop over the
// lane's cells. Written over the lane policy of banzhaf_warp_side.h, so that the cpu backend
// (banzhaf_sampled_cpu.cpp) runs the kernel's per-unit code with one lane.
#pragma once
#include <cstdint>

#include "banzhaf/banzhaf_warp_game.h"
#include "banzhaf/banzhaf_warp_side.h"

namespace hbi {
namespace banzhaf_cuda {

enum CellsMode : int {
  kFwdFast = 0,   // paired textbook forward: O(1) cells
  kFwdSlow = 1,   // reference forward (paired; exact with i, j outside the subset)
  kBwdCells = 2,  // paired backward (both definitions), exact-reference backward
  kBwdValue = 3,  // msr backward: gradient of f(S) times sum of grad * stratum weight
};

// Lane `lane`'s cells c = lane + width k, walked as (a, b) incrementally: no division in the loop.
struct CellWalk {
  int ncells, nf, a0, b0, da, db;
};

template <typename Lane>
HBI_WARP_INLINE CellWalk cell_walk(int nw, int nf, int lane) {
  CellWalk w;
  w.ncells = nw * nf;
  w.nf = nf;
  w.a0 = lane / nf;
  w.b0 = lane - w.a0 * nf;
  w.da = Lane::width / nf;
  w.db = Lane::width - w.da * nf;
  return w;
}

// Unit u of pair `pair`: the forward modes add the lane's cells' deltas into acc [nw * nf]; the backward
// modes add into grads through Lane::add, from gc (the incoming gradient per cell, kBwdCells) or gw (the
// stratum weights per cell, kBwdValue). Ends with a warp barrier.
template <int kMode, typename acc_t, typename Lane>
HBI_WARP_INLINE void cells_unit(WarpGame<acc_t, Lane>& g, const CellWalk& walk, int64_t u, uint32_t pair, uint64_t seed,
                                bool exact, bool reference, acc_t cell_scale, double* acc, const acc_t* gc,
                                const double* gw, const DevGrads<acc_t>* grads, int lane) {
  const int ncells = walk.ncells, nf = walk.nf, a0 = walk.a0, b0 = walk.b0, da = walk.da, db = walk.db;
  g.set_members(exact, static_cast<uint32_t>(u), pair, seed, lane);
  g.build_state(lane);
  if (kMode == kFwdFast) {
    g.prepare_cells(lane);
    int a = a0, b = b0;
    for (int c = lane; c < ncells; c += Lane::width) {
      acc[c] += static_cast<double>(g.cell_delta_fast(a, b));
      a += da;
      b += db;
      if (b >= nf) {
        b -= nf;
        ++a;
      }
    }
  } else if (kMode == kFwdSlow) {
    int a = a0, b = b0;
    for (int c = lane; c < ncells; c += Lane::width) {
      if (!exact || (!g.in_t[a] && !g.in_v[b]))
        acc[c] += static_cast<double>(g.template cell_delta<false>(a, b, true, acc_t(0), nullptr));
      a += da;
      b += db;
      if (b >= nf) {
        b -= nf;
        ++a;
      }
    }
  } else if (kMode == kBwdCells) {
    int a = a0, b = b0;
    for (int c = lane; c < ncells; c += Lane::width) {
      const acc_t gg = gc[c] * cell_scale;
      if ((!exact || (!g.in_t[a] && !g.in_v[b])) && gg != acc_t(0))
        g.template cell_delta<true>(a, b, reference, gg, grads);
      a += da;
      b += db;
      if (b >= nf) {
        b -= nf;
        ++a;
      }
    }
  } else {  // kBwdValue
    double s = 0;
    int a = a0, b = b0;
    for (int c = lane; c < ncells; c += Lane::width) {
      s += gw[c * 4 + (g.in_t[a] ? 2 : 0) + (g.in_v[b] ? 1 : 0)];
      a += da;
      b += db;
      if (b >= nf) {
        b -= nf;
        ++a;
      }
    }
    s = Lane::sum(s);
    g.value_grad_warp(static_cast<acc_t>(s), grads, lane);
  }
  Lane::sync();
}

}  // namespace banzhaf_cuda
}  // namespace hbi
