// The game of one pair for one warp's coalition (WarpGame): membership, the coalition's state, the cell
// deltas (fast textbook path and the O(T+V) slow path with its gradient) and the gradient of f(S). Written
// once over a lane policy (banzhaf_warp_side.h): the cells kernel runs it with CudaLane, the CPU test ops
// with SerialLane.
#pragma once
#include <cmath>
#include <cstdint>

#include "banzhaf/banzhaf_warp_side.h"
#include "philox.h"

namespace hbi {
namespace banzhaf_cuda {

template <typename acc_t, typename Lane>
struct WarpGame {
  const PairData<acc_t>* pd;
  int T, V, ld, nw, nf;
  const acc_t *R, *wt, *wv;
  uint32_t* bits;  // Philox words of the current sample
  uint8_t *in_t, *in_v;
  acc_t *r1, *r2, *k1, *k2;
  int *ra, *rb, *ka, *kb;
  acc_t *P1, *Q1, *P2, *Q2, *G1, *H1, *G2, *H2;
  DevSide<acc_t, Lane> text, video;
  int nSt, nSv;  // warp-uniform

  HBI_WARP_FN acc_t row_without(int t, int j, int& arg) const {
    if (ra[t] == j && j >= 0) {
      arg = rb[t];
      return r2[t];
    }
    arg = ra[t];
    return r1[t];
  }
  HBI_WARP_FN acc_t col_without(int v, int i, int& arg) const {
    if (ka[v] == i && i >= 0) {
      arg = kb[v];
      return k2[v];
    }
    arg = ka[v];
    return k1[v];
  }

  // Membership from Philox (sample, pair) or from a subset code of the real players (words first).
  HBI_WARP_FN void set_members(bool from_code, uint32_t unit, uint32_t pair, uint64_t seed, int lane) {
    Lane::sync();  // previous readers of bits / in_t / in_v are done
    if (from_code) {
      for (int a = lane; a < nw; a += Lane::width) in_t[a] = (unit >> a) & 1u;
      for (int b = lane; b < nf; b += Lane::width) in_v[b] = (unit >> (nw + b)) & 1u;
    } else {
      const int blocks = (T + V + 127) / 128;
      const uint32_t k0 = static_cast<uint32_t>(seed), k1s = static_cast<uint32_t>(seed >> 32);
      for (int blk = lane; blk < blocks; blk += Lane::width) {
        const Philox4 r = philox4x32_10(unit, pair, static_cast<uint32_t>(blk), 0u, k0, k1s);
        for (int w = 0; w < 4; ++w) bits[blk * 4 + w] = r.v[w];
      }
      Lane::sync();
      for (int a = lane; a < nw; a += Lane::width) {
        const int p = pd->words[a];
        in_t[a] = (bits[p >> 5] >> (p & 31)) & 1u;
      }
      for (int b = lane; b < nf; b += Lane::width) {
        const int p = T + pd->frames[b];
        in_v[b] = (bits[p >> 5] >> (p & 31)) & 1u;
      }
    }
    Lane::sync();
  }

  // |S_t|, |S_v|, both sides' softmax state, row top-2 over S_v of every real word, column top-2 over S_t
  // of every frame.
  HBI_WARP_FN void build_state(int lane) {
    int ct = 0, cv = 0;
    for (int a = lane; a < nw; a += Lane::width) ct += in_t[a];
    for (int b = lane; b < nf; b += Lane::width) cv += in_v[b];
    nSt = Lane::sum(ct);
    nSv = Lane::sum(cv);
    text.set(wt, in_t, nw, lane);
    video.set(wv, in_v, nf, lane);
    const acc_t neg_inf = static_cast<acc_t>(-INFINITY);
    for (int idx = lane; idx < nw + nf; idx += Lane::width) {
      acc_t m1 = neg_inf, m2 = neg_inf;
      int a1 = -1, a2 = -1;
      if (idx < nw) {
        const int t = idx;
        for (int v = 0; v < nf; ++v) {
          if (!in_v[v]) continue;
          const acc_t x = R[t * ld + v];
          if (x > m1) {
            m2 = m1;
            a2 = a1;
            m1 = x;
            a1 = v;
          } else if (x > m2) {
            m2 = x;
            a2 = v;
          }
        }
        r1[t] = m1;
        ra[t] = a1;
        r2[t] = m2;
        rb[t] = a2;
      } else {
        const int v = idx - nw;
        for (int t = 0; t < nw; ++t) {
          if (!in_t[t]) continue;
          const acc_t x = R[t * ld + v];
          if (x > m1) {
            m2 = m1;
            a2 = a1;
            m1 = x;
            a1 = t;
          } else if (x > m2) {
            m2 = x;
            a2 = t;
          }
        }
        k1[v] = m1;
        ka[v] = a1;
        k2[v] = m2;
        kb[v] = a2;
      }
    }
    Lane::sync();
  }

  // ---- slow path (per lane) ----------------------------------------------------------------------
  template <bool kGrad>
  HBI_WARP_FN acc_t value_of(int i, int j, bool add_i, bool add_j, bool zero_fill, acc_t scale,
                             const DevGrads<acc_t>* grads) const {
    const bool ei = i >= 0 && in_t[i], ej = j >= 0 && in_v[j];
    const int nt = nSt - ei + add_i, nv = nSv - ej + add_j;
    if (nt == 0 || nv == 0) return 0;
    const DevWeights<acc_t> tw = text.weights(i, add_i), vw = video.weights(j, add_j);
    const bool clamp_rows = zero_fill && nv < V;
    const bool clamp_cols = zero_fill && nt < T;
    const bool rest_v = nSv - ej > 0, rest_t = nSt - ei > 0;
    const acc_t neg_inf = static_cast<acc_t>(-INFINITY);

    auto row = [&](int t, int& arg) {
      acc_t m = neg_inf;
      arg = -1;
      if (rest_v) m = row_without(t, j, arg);
      if (add_j && R[t * ld + j] > m) {
        m = R[t * ld + j];
        arg = j;
      }
      if (clamp_rows && m < 0) {
        m = 0;
        arg = -1;
      }
      return m;
    };
    auto col = [&](int v, int& arg) {
      acc_t m = neg_inf;
      arg = -1;
      if (rest_t) m = col_without(v, i, arg);
      if (add_i && R[i * ld + v] > m) {
        m = R[i * ld + v];
        arg = i;
      }
      if (clamp_cols && m < 0) {
        m = 0;
        arg = -1;
      }
      return m;
    };
    // The members of c (S minus i) weigh E[t] g / Z, the added i weighs e / Z.
    acc_t text_part = 0, video_part = 0;
    int arg;
    for (int t = 0; t < nw; ++t)
      if (in_t[t] && t != i) text_part += tw.E[t] * row(t, arg);
    text_part *= tw.g;
    if (add_i) text_part += tw.e * row(i, arg);
    for (int v = 0; v < nf; ++v)
      if (in_v[v] && v != j) video_part += vw.E[v] * col(v, arg);
    video_part *= vw.g;
    if (add_j) video_part += vw.e * col(j, arg);
    text_part /= tw.Z;
    video_part /= vw.Z;
    if (kGrad) {
      const acc_t half = acc_t(0.5) * scale;
      auto word_grad = [&](int t, acc_t a) {
        const acc_t m = row(t, arg);
        if (arg >= 0) Lane::add(&grads->sim[t * ld + arg], half * a);
        Lane::add(&grads->text_weight[t], half * a * (m - text_part));
      };
      auto frame_grad = [&](int v, acc_t c) {
        const acc_t m = col(v, arg);
        if (arg >= 0) Lane::add(&grads->sim[arg * ld + v], half * c);
        Lane::add(&grads->video_weight[v], half * c * (m - video_part));
      };
      const acc_t text_scale = tw.g / tw.Z, video_scale = vw.g / vw.Z;
      for (int t = 0; t < nw; ++t)
        if (in_t[t] && t != i) word_grad(t, tw.E[t] * text_scale);
      if (add_i) word_grad(i, tw.e / tw.Z);
      for (int v = 0; v < nf; ++v)
        if (in_v[v] && v != j) frame_grad(v, vw.E[v] * video_scale);
      if (add_j) frame_grad(j, vw.e / vw.Z);
    }
    return acc_t(0.5) * (text_part + video_part);
  }

  template <bool kGrad>
  HBI_WARP_FN acc_t reference_value1(int i, int j, acc_t scale, const DevGrads<acc_t>* grads) const {
    const bool ei = in_t[i], ej = in_v[j];
    const bool rest_v = nSv - ej > 0, rest_t = nSt - ei > 0;
    const DevWeights<acc_t> tc = text.weights(i, false), vc = video.weights(j, false);  // value4's, over c
    const acc_t rij = R[i * ld + j];
    const acc_t row_i = (V > 1 && rij < 0) ? acc_t(0) : rij;
    const acc_t col_j = (T > 1 && rij < 0) ? acc_t(0) : rij;
    auto row = [&](int t, int& arg) {
      arg = -1;
      if (!rest_v) return acc_t(0);
      const acc_t m = row_without(t, j, arg);
      if (m < 0) {
        arg = -1;
        return acc_t(0);
      }
      return m;
    };
    auto col = [&](int v, int& arg) {
      arg = -1;
      if (!rest_t) return acc_t(0);
      const acc_t m = col_without(v, i, arg);
      if (m < 0) {
        arg = -1;
        return acc_t(0);
      }
      return m;
    };
    // Softmax over logits in [0, 1] (probabilities) and the raw logit: shift by (a bound of) their
    // maximum; without other members the raw logit is alone.
    const acc_t shift_t = rest_t ? mx(wt[i], acc_t(1)) : wt[i];
    const acc_t shift_v = rest_v ? mx(wv[j], acc_t(1)) : wv[j];
    acc_t Dt = dev_exp(wt[i] - shift_t), text_part = Dt * row_i;
    acc_t Dv = dev_exp(wv[j] - shift_v), video_part = Dv * col_j;
    int arg;
    for (int t = 0; t < nw; ++t) {
      if (t == i || !in_t[t]) continue;
      const acc_t e = dev_exp(tc.E[t] / tc.Z - shift_t);
      Dt += e;
      text_part += e * row(t, arg);
    }
    for (int v = 0; v < nf; ++v) {
      if (v == j || !in_v[v]) continue;
      const acc_t e = dev_exp(vc.E[v] / vc.Z - shift_v);
      Dv += e;
      video_part += e * col(v, arg);
    }
    text_part /= Dt;
    video_part /= Dv;
    if (kGrad) {
      const acc_t half = acc_t(0.5) * scale;
      const acc_t alpha_i = dev_exp(wt[i] - shift_t) / Dt;
      if (!(V > 1 && rij < 0)) Lane::add(&grads->sim[i * ld + j], half * alpha_i);
      Lane::add(&grads->text_weight[i], half * alpha_i * (row_i - text_part));
      acc_t gamma_dot_p = 0;
      for (int t = 0; t < nw; ++t) {
        if (t == i || !in_t[t]) continue;
        const acc_t p = tc.E[t] / tc.Z;
        const acc_t alpha = dev_exp(p - shift_t) / Dt;
        const acc_t m = row(t, arg);
        if (arg >= 0) Lane::add(&grads->sim[t * ld + arg], half * alpha);
        gamma_dot_p += alpha * (m - text_part) * p;
      }
      for (int t = 0; t < nw; ++t) {
        if (t == i || !in_t[t]) continue;
        const acc_t p = tc.E[t] / tc.Z;
        const acc_t alpha = dev_exp(p - shift_t) / Dt;
        const acc_t gamma = alpha * (row(t, arg) - text_part);
        Lane::add(&grads->text_weight[t], half * p * (gamma - gamma_dot_p));
      }
      const acc_t beta_j = dev_exp(wv[j] - shift_v) / Dv;
      if (!(T > 1 && rij < 0)) Lane::add(&grads->sim[i * ld + j], half * beta_j);
      Lane::add(&grads->video_weight[j], half * beta_j * (col_j - video_part));
      acc_t delta_dot_q = 0;
      for (int v = 0; v < nf; ++v) {
        if (v == j || !in_v[v]) continue;
        const acc_t q = vc.E[v] / vc.Z;
        const acc_t beta = dev_exp(q - shift_v) / Dv;
        const acc_t m = col(v, arg);
        if (arg >= 0) Lane::add(&grads->sim[arg * ld + v], half * beta);
        delta_dot_q += beta * (m - video_part) * q;
      }
      for (int v = 0; v < nf; ++v) {
        if (v == j || !in_v[v]) continue;
        const acc_t q = vc.E[v] / vc.Z;
        const acc_t beta = dev_exp(q - shift_v) / Dv;
        const acc_t delta = beta * (col(v, arg) - video_part);
        Lane::add(&grads->video_weight[v], half * q * (delta - delta_dot_q));
      }
    }
    return acc_t(0.5) * (text_part + video_part);
  }

  template <bool kGrad>
  HBI_WARP_FN acc_t cell_delta(int i, int j, bool reference, acc_t scale, const DevGrads<acc_t>* grads) const {
    const acc_t both = reference ? reference_value1<kGrad>(i, j, scale, grads)
                                 : value_of<kGrad>(i, j, true, true, false, scale, grads);
    return both - value_of<kGrad>(i, j, true, false, reference, -scale, grads) -
           value_of<kGrad>(i, j, false, true, reference, -scale, grads) +
           value_of<kGrad>(i, j, false, false, reference, scale, grads);
  }

  // ---- fast path (textbook forward) ----------------------------------------------------------------
  // Sums over S_t (scale E1) and over S_t minus its top
  // word (scale E2), likewise for frames.
  HBI_WARP_FN void prepare_cells(int lane) {
    const acc_t neg_inf = static_cast<acc_t>(-INFINITY);
    for (int idx = lane; idx < nw + nf; idx += Lane::width) {
      if (idx < nf) {
        const int j = idx;
        const bool rest_v = nSv - in_v[j] > 0;
        acc_t p1 = 0, q1 = 0, p2 = 0, q2 = 0;
        for (int t = 0; t < nw; ++t) {
          if (!in_t[t]) continue;
          int arg;
          const acc_t m = rest_v ? row_without(t, j, arg) : neg_inf;
          const acc_t mj = mx(m, R[t * ld + j]);
          if (rest_v) p1 += text.E1[t] * m;
          q1 += text.E1[t] * mj;
          if (t == text.top) continue;
          if (rest_v) p2 += text.E2[t] * m;
          q2 += text.E2[t] * mj;
        }
        P1[j] = p1;
        Q1[j] = q1;
        P2[j] = p2;
        Q2[j] = q2;
      } else {
        const int i = idx - nf;
        const bool rest_t = nSt - in_t[i] > 0;
        acc_t g1 = 0, h1 = 0, g2 = 0, h2 = 0;
        for (int v = 0; v < nf; ++v) {
          if (!in_v[v]) continue;
          int arg;
          const acc_t m = rest_t ? col_without(v, i, arg) : neg_inf;
          const acc_t mi = mx(m, R[i * ld + v]);
          if (rest_t) g1 += video.E1[v] * m;
          h1 += video.E1[v] * mi;
          if (v == video.top) continue;
          if (rest_t) g2 += video.E2[v] * m;
          h2 += video.E2[v] * mi;
        }
        G1[i] = g1;
        H1[i] = h1;
        G2[i] = g2;
        H2[i] = h2;
      }
    }
    Lane::sync();
  }

  HBI_WARP_FN acc_t cell_delta_fast(int i, int j) const {
    const bool ei = in_t[i], ej = in_v[j];
    const int nct = nSt - ei, ncv = nSv - ej;
    const acc_t neg_inf = static_cast<acc_t>(-INFINITY);
    const acc_t rij = R[i * ld + j];
    int arg;
    const acc_t row_i = ncv > 0 ? row_without(i, j, arg) : neg_inf;
    const acc_t row_ij = mx(row_i, rij);
    const acc_t col_j = nct > 0 ? col_without(j, i, arg) : neg_inf;
    const acc_t col_ij = mx(col_j, rij);
    const bool second_t = ei && i == text.top, second_v = ej && j == video.top;
    const acc_t own_i = (ei && !second_t) ? text.E1[i] : acc_t(0);
    const acc_t own_j = (ej && !second_v) ? video.E1[j] : acc_t(0);
    const acc_t Ztc = second_t ? text.Z2 : text.Z1 - own_i;
    const acc_t Zvc = second_v ? video.Z2 : video.Z1 - own_j;
    const acc_t text_cj = second_t ? Q2[j] : Q1[j] - own_i * row_ij;
    const acc_t video_ci = second_v ? H2[i] : H1[i] - own_j * col_ij;
    const acc_t g = text.join_g[i], e = text.join_e[i], h = video.join_g[j], f = video.join_e[j];
    const acc_t Zti = Ztc * g + e, Zvj = Zvc * h + f;
    acc_t delta = acc_t(0.5) * ((text_cj * g + e * row_ij) / Zti + (video_ci * h + f * col_ij) / Zvj);
    const acc_t text_c = ncv > 0 ? (second_t ? P2[j] : P1[j] - own_i * row_i) : acc_t(0);
    const acc_t video_c = nct > 0 ? (second_v ? G2[i] : G1[i] - own_j * col_j) : acc_t(0);
    if (ncv > 0) delta -= acc_t(0.5) * ((text_c * g + e * row_i) / Zti + video_ci / Zvc);
    if (nct > 0) delta -= acc_t(0.5) * (text_cj / Ztc + (video_c * h + f * col_j) / Zvj);
    if (nct > 0 && ncv > 0) delta += acc_t(0.5) * (text_c / Ztc + video_c / Zvc);
    return delta;
  }

  // Gradient of f(S) itself (the msr backward), by the whole warp, times `scale`.
  HBI_WARP_FN void value_grad_warp(acc_t scale, const DevGrads<acc_t>* grads, int lane) const {
    if (nSt == 0 || nSv == 0) return;
    acc_t text_part = 0, video_part = 0;
    for (int t = lane; t < nw; t += Lane::width)
      if (in_t[t]) text_part += text.E1[t] * r1[t];
    for (int v = lane; v < nf; v += Lane::width)
      if (in_v[v]) video_part += video.E1[v] * k1[v];
    text_part = Lane::sum(text_part) / text.Z1;
    video_part = Lane::sum(video_part) / video.Z1;
    const acc_t half = acc_t(0.5) * scale;
    for (int t = lane; t < nw; t += Lane::width) {
      if (!in_t[t]) continue;
      const acc_t a = text.E1[t] / text.Z1;
      if (ra[t] >= 0) Lane::add(&grads->sim[t * ld + ra[t]], half * a);
      Lane::add(&grads->text_weight[t], half * a * (r1[t] - text_part));
    }
    for (int v = lane; v < nf; v += Lane::width) {
      if (!in_v[v]) continue;
      const acc_t c = video.E1[v] / video.Z1;
      if (ka[v] >= 0) Lane::add(&grads->sim[ka[v] * ld + v], half * c);
      Lane::add(&grads->video_weight[v], half * c * (k1[v] - video_part));
    }
  }
};

}  // namespace banzhaf_cuda
}  // namespace hbi
