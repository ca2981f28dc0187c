// The WTI game of one text-video pair (docs/banzhaf.md) and the values the sampled estimators need.
//
// A coalition S is set once per sample; for each cell (i, j) the estimators need values of
// c = S \ {i, j} plus i and/or j. Keeping, for every row and column, the two largest entries over S
// makes removing i or j O(1), so one coalition value costs O(T + V) (the "slow path", used by the
// reference definition and every backward pass), and per-row/per-column partial sums make a whole
// textbook cell O(1) after O(T * V) per sample (the "fast path" of the forward pass).
//
// Softmax weights are exact for any finite logits: each side's exponentials are taken relative to the
// coalition's own largest logit m1 (E1, sum Z1 >= 1), and relative to its second largest m2 over S
// without the top player a1 (E2, Z2), for the coalitions c = S \ {a1}; a player joining c whose logit
// exceeds c's largest rescales c's sums by exp(largest - logit) instead of overflowing ("join factors"
// g, e: c + i weighs c's terms by g and i by e). So no sum of exponentials underflows to 0 and none is
// a difference of nearly equal numbers.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace hbi {

template <typename acc_t>
struct GameGrads {
  acc_t* sim;           // [T * V]
  acc_t* text_weight;   // [T]
  acc_t* video_weight;  // [V]
};

template <typename acc_t>
class PairGame {
 public:
  static constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();

  // Softmax weights of one side of a value, k the player removed and possibly re-added: the other
  // members t weigh E[t] g / Z, k itself (when added) e / Z.
  struct Weights {
    const acc_t* E;
    acc_t g, e, Z;
  };

  PairGame(int num_words, int num_frames)
      : T(num_words),
        V(num_frames),
        R(num_words * num_frames),
        wt(num_words),
        wv(num_frames),
        text_(num_words),
        video_(num_frames),
        in_t(num_words),
        in_v(num_frames),
        r1(num_words),
        r2(num_words),
        ra(num_words),
        rb(num_words),
        k1(num_frames),
        k2(num_frames),
        ka(num_frames),
        kb(num_frames),
        P1(num_frames),
        Q1(num_frames),
        P2(num_frames),
        Q2(num_frames),
        G1(num_words),
        H1(num_words),
        G2(num_words),
        H2(num_words) {}

  // Loads pair b. sim: [T * V], weights [T] / [V], masks [T] / [V] (nonzero = real).
  template <typename scalar_t>
  void load(const scalar_t* sim, const scalar_t* text_weight, const scalar_t* video_weight, const bool* text_mask,
            const bool* video_mask) {
    words.clear();
    frames.clear();
    for (int t = 0; t < T; ++t)
      if (text_mask[t]) words.push_back(t);
    for (int v = 0; v < V; ++v)
      if (video_mask[v]) frames.push_back(v);
    for (int k = 0; k < T * V; ++k) R[k] = static_cast<acc_t>(sim[k]);
    for (int t = 0; t < T; ++t) wt[t] = static_cast<acc_t>(text_weight[t]);
    for (int v = 0; v < V; ++v) wv[v] = static_cast<acc_t>(video_weight[v]);
  }

  int num_players() const { return static_cast<int>(words.size() + frames.size()); }
  const std::vector<int>& real_words() const { return words; }
  const std::vector<int>& real_frames() const { return frames; }
  bool word_in(int t) const { return in_t[t]; }
  bool frame_in(int v) const { return in_v[v]; }

  // Sets S from per-position membership (padded positions must be false) and derives its state.
  template <typename Membership>
  void set_coalition(Membership&& member) {
    nSt = nSv = 0;
    for (int t = 0; t < T; ++t) in_t[t] = false;
    for (int v = 0; v < V; ++v) in_v[v] = false;
    for (int t : words)
      if (member(t)) {
        in_t[t] = true;
        ++nSt;
      }
    for (int v : frames)
      if (member(T + v)) {
        in_v[v] = true;
        ++nSv;
      }
    text_.set(wt, words, in_t);
    video_.set(wv, frames, in_v);
    for (int t : words) {
      acc_t m1 = kNegInf, m2 = kNegInf;
      int a1 = -1, a2 = -1;
      for (int v : frames) {
        if (!in_v[v]) continue;
        const acc_t x = R[t * V + v];
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
    }
    for (int v : frames) {
      acc_t m1 = kNegInf, m2 = kNegInf;
      int a1 = -1, a2 = -1;
      for (int t : words) {
        if (!in_t[t]) continue;
        const acc_t x = R[t * V + v];
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

  // Sets S from Philox coalition bits (player k: word k < T, frame k - T).
  void set_coalition_bits(const uint32_t* bits) {
    set_coalition([bits](int k) { return ((bits[k >> 5] >> (k & 31)) & 1u) != 0; });
  }

  // ---------------------------------------------------------------------------------------------
  // Slow path: the value of X = (S \ {i, j}) + (add_i ? i) + (add_j ? j) in O(T + V), with its
  // gradient when kGrad (scaled by `scale`). i < 0 / j < 0: no word / frame removed or added.
  // zero_fill: the reference's F (zero-filled maxima, softmax over members) instead of f.
  template <bool kGrad>
  acc_t value_of(int i, int j, bool add_i, bool add_j, bool zero_fill, acc_t scale = 0,
                 GameGrads<acc_t>* grads = nullptr) const {
    const bool ei = i >= 0 && in_t[i], ej = j >= 0 && in_v[j];
    const int nt = nSt - ei + add_i, nv = nSv - ej + add_j;
    if (nt == 0 || nv == 0) return 0;  // f, and F, vanish without a word or without a frame
    const Weights tw = text_.weights(i, add_i), vw = video_.weights(j, add_j);
    const bool clamp_rows = zero_fill && nv < V;  // some position of every row was zero-filled
    const bool clamp_cols = zero_fill && nt < T;
    const bool rest_v = nSv - ej > 0, rest_t = nSt - ei > 0;  // c_v, c_t nonempty

    auto row = [&](int t, int& arg) {
      acc_t m = kNegInf;
      arg = -1;
      if (rest_v) m = row_without(t, j, arg);
      if (add_j && R[t * V + j] > m) {
        m = R[t * V + j];
        arg = j;
      }
      if (clamp_rows && m < 0) {
        m = 0;
        arg = -1;
      }
      return m;
    };
    auto col = [&](int v, int& arg) {
      acc_t m = kNegInf;
      arg = -1;
      if (rest_t) m = col_without(v, i, arg);
      if (add_i && R[i * V + v] > m) {
        m = R[i * V + v];
        arg = i;
      }
      if (clamp_cols && m < 0) {
        m = 0;
        arg = -1;
      }
      return m;
    };
    // The members of c (S minus i) weigh E[t] g / Z, the added i weighs e / Z.
    acc_t text = 0, video = 0;
    int arg;
    for (int t : words)
      if (in_t[t] && t != i) text += tw.E[t] * row(t, arg);
    text *= tw.g;
    if (add_i) text += tw.e * row(i, arg);
    for (int v : frames)
      if (in_v[v] && v != j) video += vw.E[v] * col(v, arg);
    video *= vw.g;
    if (add_j) video += vw.e * col(j, arg);
    text /= tw.Z;
    video /= vw.Z;
    if (kGrad) {
      const acc_t half = acc_t(0.5) * scale;
      auto word_grad = [&](int t, acc_t a) {
        const acc_t m = row(t, arg);
        if (arg >= 0) grads->sim[t * V + arg] += half * a;
        grads->text_weight[t] += half * a * (m - text);
      };
      auto frame_grad = [&](int v, acc_t c) {
        const acc_t m = col(v, arg);
        if (arg >= 0) grads->sim[arg * V + v] += half * c;
        grads->video_weight[v] += half * c * (m - video);
      };
      const acc_t text_scale = tw.g / tw.Z, video_scale = vw.g / vw.Z;
      for (int t : words)
        if (in_t[t] && t != i) word_grad(t, tw.E[t] * text_scale);
      if (add_i) word_grad(i, tw.e / tw.Z);
      for (int v : frames)
        if (in_v[v] && v != j) frame_grad(v, vw.E[v] * video_scale);
      if (add_j) frame_grad(j, vw.e / vw.Z);
    }
    return acc_t(0.5) * (text + video);
  }

  // The reference's value1 for cell (i, j), O(T + V): value4's zero-filled matrix with only (i, j)
  // restored; weight logits = value4's softmax probabilities at members of c, the raw logit at i (j).
  template <bool kGrad>
  acc_t reference_value1(int i, int j, acc_t scale = 0, GameGrads<acc_t>* grads = nullptr) const {
    const bool ei = in_t[i], ej = in_v[j];
    const bool rest_v = nSv - ej > 0, rest_t = nSt - ei > 0;
    const Weights tc = text_.weights(i, false), vc = video_.weights(j, false);  // value4's, over c
    const acc_t rij = R[i * V + j];
    // Row i holds only R[i, j] (zeros elsewhere when V > 1); column j likewise.
    const acc_t row_i = (V > 1 && rij < 0) ? acc_t(0) : rij;
    const acc_t col_j = (T > 1 && rij < 0) ? acc_t(0) : rij;
    // Rows of c: entries of c_v, zeros elsewhere (j is never in c_v, so a zero is always present).
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
    const acc_t shift_t = rest_t ? std::max(wt[i], acc_t(1)) : wt[i];
    const acc_t shift_v = rest_v ? std::max(wv[j], acc_t(1)) : wv[j];
    acc_t Dt = std::exp(wt[i] - shift_t), text = Dt * row_i;
    acc_t Dv = std::exp(wv[j] - shift_v), video = Dv * col_j;
    int arg;
    for (int t : words) {
      if (t == i || !in_t[t]) continue;
      const acc_t e = std::exp(tc.E[t] / tc.Z - shift_t);
      Dt += e;
      text += e * row(t, arg);
    }
    for (int v : frames) {
      if (v == j || !in_v[v]) continue;
      const acc_t e = std::exp(vc.E[v] / vc.Z - shift_v);
      Dv += e;
      video += e * col(v, arg);
    }
    text /= Dt;
    video /= Dv;
    if (kGrad) {
      const acc_t half = acc_t(0.5) * scale;
      // Text side: alpha = softmax weights, gamma = d text / d logit.
      const acc_t alpha_i = std::exp(wt[i] - shift_t) / Dt;
      if (!(V > 1 && rij < 0)) grads->sim[i * V + j] += half * alpha_i;
      grads->text_weight[i] += half * alpha_i * (row_i - text);
      acc_t gamma_dot_p = 0;  // sum over t in c_t of gamma_t * p_t (p = value4's probabilities)
      for (int t : words) {
        if (t == i || !in_t[t]) continue;
        const acc_t p = tc.E[t] / tc.Z;
        const acc_t alpha = std::exp(p - shift_t) / Dt;
        const acc_t m = row(t, arg);
        if (arg >= 0) grads->sim[t * V + arg] += half * alpha;
        gamma_dot_p += alpha * (m - text) * p;
      }
      for (int t : words) {
        if (t == i || !in_t[t]) continue;
        const acc_t p = tc.E[t] / tc.Z;
        const acc_t alpha = std::exp(p - shift_t) / Dt;
        const acc_t gamma = alpha * (row(t, arg) - text);
        grads->text_weight[t] += half * p * (gamma - gamma_dot_p);
      }
      const acc_t beta_j = std::exp(wv[j] - shift_v) / Dv;
      if (!(T > 1 && rij < 0)) grads->sim[i * V + j] += half * beta_j;
      grads->video_weight[j] += half * beta_j * (col_j - video);
      acc_t delta_dot_q = 0;
      for (int v : frames) {
        if (v == j || !in_v[v]) continue;
        const acc_t q = vc.E[v] / vc.Z;
        const acc_t beta = std::exp(q - shift_v) / Dv;
        const acc_t m = col(v, arg);
        if (arg >= 0) grads->sim[arg * V + v] += half * beta;
        delta_dot_q += beta * (m - video) * q;
      }
      for (int v : frames) {
        if (v == j || !in_v[v]) continue;
        const acc_t q = vc.E[v] / vc.Z;
        const acc_t beta = std::exp(q - shift_v) / Dv;
        const acc_t delta = beta * (col(v, arg) - video);
        grads->video_weight[v] += half * q * (delta - delta_dot_q);
      }
    }
    return acc_t(0.5) * (text + video);
  }

  // Second-order difference of cell (i, j) at c = S \ {i, j}, O(T + V); with its gradient when kGrad.
  template <bool kGrad>
  acc_t cell_delta(int i, int j, bool reference, acc_t scale = 0, GameGrads<acc_t>* grads = nullptr) const {
    const acc_t both = reference ? reference_value1<kGrad>(i, j, scale, grads)
                                 : value_of<kGrad>(i, j, true, true, false, scale, grads);
    return both - value_of<kGrad>(i, j, true, false, reference, -scale, grads) -
           value_of<kGrad>(i, j, false, true, reference, -scale, grads) +
           value_of<kGrad>(i, j, false, false, reference, scale, grads);
  }

  // ---------------------------------------------------------------------------------------------
  // Fast path (textbook forward): after prepare_cells(), cell_delta_fast(i, j) is O(1).
  void prepare_cells() {
    const int a1 = text_.top, b1 = video_.top;
    for (int j : frames) {
      const bool rest_v = nSv - in_v[j] > 0;
      acc_t p1 = 0, q1 = 0, p2 = 0, q2 = 0;
      for (int t : words) {
        if (!in_t[t]) continue;
        int arg;
        const acc_t m = rest_v ? row_without(t, j, arg) : kNegInf;
        const acc_t mj = std::max(m, R[t * V + j]);
        if (rest_v) p1 += text_.E1[t] * m;
        q1 += text_.E1[t] * mj;
        if (t == a1) continue;
        if (rest_v) p2 += text_.E2[t] * m;
        q2 += text_.E2[t] * mj;
      }
      P1[j] = p1;
      Q1[j] = q1;  // sum over S_t (c_t: S_t minus the top word) of E * rowmax over S_v \ j
      P2[j] = p2;
      Q2[j] = q2;  // ... and over (S_v \ j) + j
    }
    for (int i : words) {
      const bool rest_t = nSt - in_t[i] > 0;
      acc_t g1 = 0, h1 = 0, g2 = 0, h2 = 0;
      for (int v : frames) {
        if (!in_v[v]) continue;
        int arg;
        const acc_t m = rest_t ? col_without(v, i, arg) : kNegInf;
        const acc_t mi = std::max(m, R[i * V + v]);
        if (rest_t) g1 += video_.E1[v] * m;
        h1 += video_.E1[v] * mi;
        if (v == b1) continue;
        if (rest_t) g2 += video_.E2[v] * m;
        h2 += video_.E2[v] * mi;
      }
      G1[i] = g1;
      H1[i] = h1;
      G2[i] = g2;
      H2[i] = h2;
    }
  }

  acc_t cell_delta_fast(int i, int j) const {
    const bool ei = in_t[i], ej = in_v[j];
    const int nct = nSt - ei, ncv = nSv - ej;
    const acc_t rij = R[i * V + j];
    int arg;
    // Row i over c_v (and + j), column j over c_t (and + i).
    const acc_t row_i = ncv > 0 ? row_without(i, j, arg) : kNegInf;
    const acc_t row_ij = std::max(row_i, rij);
    const acc_t col_j = nct > 0 ? col_without(j, i, arg) : kNegInf;
    const acc_t col_ij = std::max(col_j, rij);
    // Sums over c_t (S_t minus i: the second scale when i is the top word) and over c_v.
    const bool second_t = ei && i == text_.top, second_v = ej && j == video_.top;
    const acc_t own_i = (ei && !second_t) ? text_.E1[i] : acc_t(0);
    const acc_t own_j = (ej && !second_v) ? video_.E1[j] : acc_t(0);
    const acc_t Ztc = second_t ? text_.Z2 : text_.Z1 - own_i;
    const acc_t Zvc = second_v ? video_.Z2 : video_.Z1 - own_j;
    const acc_t text_cj = second_t ? Q2[j] : Q1[j] - own_i * row_ij;   // rows over c_v + j
    const acc_t video_ci = second_v ? H2[i] : H1[i] - own_j * col_ij;  // columns over c_t + i
    // c + i: c's terms times g, i's times e (join factors); c + j likewise.
    const acc_t g = text_.join_g[i], e = text_.join_e[i], h = video_.join_g[j], f = video_.join_e[j];
    const acc_t Zti = Ztc * g + e, Zvj = Zvc * h + f;
    acc_t delta = acc_t(0.5) * ((text_cj * g + e * row_ij) / Zti + (video_ci * h + f * col_ij) / Zvj);
    const acc_t text_c = ncv > 0 ? (second_t ? P2[j] : P1[j] - own_i * row_i) : acc_t(0);
    const acc_t video_c = nct > 0 ? (second_v ? G2[i] : G1[i] - own_j * col_j) : acc_t(0);
    if (ncv > 0)  // f(c + i)
      delta -= acc_t(0.5) * ((text_c * g + e * row_i) / Zti + video_ci / Zvc);
    if (nct > 0)  // f(c + j)
      delta -= acc_t(0.5) * (text_cj / Ztc + (video_c * h + f * col_j) / Zvj);
    if (nct > 0 && ncv > 0)  // f(c)
      delta += acc_t(0.5) * (text_c / Ztc + video_c / Zvc);
    return delta;
  }

 private:
  // Maximum of row t over S_v without frame j (-inf if none), and where it is.
  acc_t row_without(int t, int j, int& arg) const {
    if (ra[t] == j && j >= 0) {
      arg = rb[t];
      return r2[t];
    }
    arg = ra[t];
    return r1[t];
  }
  acc_t col_without(int v, int i, int& arg) const {
    if (ka[v] == i && i >= 0) {
      arg = kb[v];
      return k2[v];
    }
    arg = ka[v];
    return k1[v];
  }

  // One side's softmax state for the current coalition (see the top of this file).
  struct Side {
    std::vector<acc_t> E1, E2, join_g, join_e;
    acc_t Z1 = 0, Z2 = 0;
    int top = -1;  // the member with the largest logit (the first of ties)

    explicit Side(int n) : E1(n), E2(n), join_g(n), join_e(n) {}

    void set(const std::vector<acc_t>& w, const std::vector<int>& players, const std::vector<uint8_t>& in) {
      acc_t m1 = kNegInf, m2 = kNegInf;
      top = -1;
      for (int k : players) {
        if (!in[k]) continue;
        if (top < 0 || w[k] > m1) {
          m2 = m1;
          m1 = w[k];
          top = k;
        } else if (w[k] > m2)
          m2 = w[k];
      }
      Z1 = Z2 = 0;
      for (int k : players) {
        E1[k] = E2[k] = 0;
        if (!in[k]) continue;
        E1[k] = std::exp(w[k] - m1);
        Z1 += E1[k];
        if (k == top) continue;
        E2[k] = std::exp(w[k] - m2);
        Z2 += E2[k];
      }
      for (int k : players) {
        const acc_t base = k == top ? m2 : m1;  // the largest logit of S minus k
        if (w[k] > base) {
          join_g[k] = base == kNegInf ? acc_t(0) : std::exp(base - w[k]);
          join_e[k] = 1;
        } else {
          join_g[k] = 1;
          join_e[k] = std::exp(w[k] - base);
        }
      }
    }

    // The weights of (S minus k) + (add ? k) (k < 0: S itself).
    Weights weights(int k, bool add) const {
      Weights out;
      const bool second = k >= 0 && k == top;
      out.E = second ? E2.data() : E1.data();
      const acc_t own = (k >= 0 && !second) ? E1[k] : acc_t(0);  // 0 unless k is a member
      const acc_t Zc = second ? Z2 : Z1 - own;
      out.g = add ? join_g[k] : acc_t(1);
      out.e = add ? join_e[k] : acc_t(0);
      out.Z = Zc * out.g + out.e;
      return out;
    }
  };

  int T, V;
  std::vector<acc_t> R, wt, wv;
  std::vector<int> words, frames;
  Side text_, video_;
  std::vector<uint8_t> in_t, in_v;
  int nSt = 0, nSv = 0;
  std::vector<acc_t> r1, r2;
  std::vector<int> ra, rb;
  std::vector<acc_t> k1, k2;
  std::vector<int> ka, kb;
  std::vector<acc_t> P1, Q1, P2, Q2, G1, H1, G2, H2;
};

}  // namespace hbi
