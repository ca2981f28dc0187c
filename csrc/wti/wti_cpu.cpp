// CPU kernels of hbi_ops::wti_similarity and hbi_ops::wti_similarity_backward (docs/wti.md).
//
// Forward: the real (unpadded) words of all texts and the real frames of all videos are gathered into
// X_r [real words, D] and Y_r [real frames, D]; for a block of texts one GEMM S = X_r[block] @ Y_r^T gives
// every needed dot product (padded entries are irrelevant in "ignore" mode and known zeros in "zero" mode,
// so they are never computed). Per text, one vectorised pass over its rows of S takes the column maxima
// (v2t) of all frames of all videos at once; the row maxima (t2v) are then taken per (text, video) pair.
// Arg-maxima are the first maximal entry. S [A, B, T, V] is never materialised: a block holds at most ~4M
// entries.
//
// The arg-max convention (shared with the backward): t2v_argmax[a, b, t] is the frame v whose S[a, b, t, v]
// is the maximum of word t, or -1 when that maximum is not a real entry (t is padding; the video has no real
// frame; in zero-padding mode, a masked 0 beats every real entry). v2t_argmax likewise. The score is then, in
// both padding modes,
//   score[a, b] = 1/2 * ( sum_t p[a,t] S[a,b,t,i(a,b,t)] + sum_v q[b,v] S[a,b,j(a,b,v),v] )
// over the entries with a non-negative index, which is also what the backward differentiates.
//
// Backward: sparse, from the kept arg-max indices (2 (T + V) row updates of width D per pair instead of the
// T V D of S): pass 1 runs over blocks of texts (grad_text, grad_text_weight), pass 2 over blocks of videos
// (grad_video, grad_video_weight), so no two threads ever write to the same row.
//
// Arithmetic runs in at::opmath_type (float for float16 / bfloat16, double for float64). The maximum and
// padding rules are those of wti_rules.h, which the CUDA epilogue calls too.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "wti/wti_rules.h"

namespace {

constexpr int64_t kBlockEntries = int64_t{1} << 22;  // dot products held per forward GEMM block
constexpr int64_t kCacheBlock = 16;                  // texts (videos) sharing one pass over a video (text)

void check_float_cpu(const at::Tensor& tensor, const char* name, int64_t dim) {
  TORCH_CHECK(tensor.defined(), "wti_similarity: ", name, " is undefined");
  TORCH_CHECK(tensor.device().is_cpu(), "wti_similarity (cpu kernel): ", name, " must be a CPU tensor, got ",
              tensor.device());
  TORCH_CHECK(at::isFloatingType(tensor.scalar_type()), "wti_similarity: ", name,
              " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", tensor.scalar_type());
  TORCH_CHECK(tensor.dim() == dim, "wti_similarity: ", name, " must have ", dim, " dimensions, got shape ",
              tensor.sizes());
}

void check_shape(const at::Tensor& tensor, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(tensor.sizes() == expected, "wti_similarity: ", name, " must have shape ", expected, ", got ",
              tensor.sizes());
}

void check_same_dtype(const at::Tensor& tensor, const char* name, const at::Tensor& text) {
  TORCH_CHECK(tensor.scalar_type() == text.scalar_type(), "wti_similarity: ", name, " has dtype ", tensor.scalar_type(),
              " but text has ", text.scalar_type(), "; all features and weights must share one dtype");
}

// video's dtype, then text_weight [A, T] and video_weight [B, V] (after text and video are checked).
void check_weights(const at::Tensor& text, const at::Tensor& video, const at::Tensor& text_weight,
                   const at::Tensor& video_weight) {
  const int64_t A = text.size(0), T = text.size(1), B = video.size(0), V = video.size(1);
  check_same_dtype(video, "video", text);
  check_float_cpu(text_weight, "text_weight", 2);
  check_shape(text_weight, "text_weight", {A, T});
  check_same_dtype(text_weight, "text_weight", text);
  check_float_cpu(video_weight, "video_weight", 2);
  check_shape(video_weight, "video_weight", {B, V});
  check_same_dtype(video_weight, "video_weight", text);
}

void check_index_cpu(const at::Tensor& tensor, const char* name, at::IntArrayRef expected, int64_t bound) {
  TORCH_CHECK(tensor.defined(), "wti_similarity_backward: ", name, " is undefined");
  TORCH_CHECK(tensor.device().is_cpu(), "wti_similarity_backward (cpu kernel): ", name, " must be a CPU tensor, got ",
              tensor.device());
  TORCH_CHECK(tensor.scalar_type() == at::kInt, "wti_similarity_backward: ", name, " must be int32, got ",
              tensor.scalar_type());
  TORCH_CHECK(tensor.sizes() == expected, "wti_similarity_backward: ", name, " must have shape ", expected, ", got ",
              tensor.sizes());
  if (tensor.numel() > 0) {
    auto [low, high] = at::aminmax(tensor);
    const int64_t lo = low.item<int64_t>(), hi = high.item<int64_t>();
    TORCH_CHECK(lo >= -1 && hi < bound, "wti_similarity_backward: ", name, " must hold indices in [-1, ", bound - 1,
                "], got values in [", lo, ", ", hi, "]");
  }
}

// Inner loops, compiled for AVX-512, AVX2 and the baseline ISA and picked at load time (GCC function
// multi-versioning): the extension is built without -march flags. Each multi-versioned wrapper inlines a
// template body, which is then compiled for the wrapper's target.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define HBI_MULTIVERSION __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#define HBI_INLINE inline __attribute__((always_inline))
#else
#define HBI_MULTIVERSION
#define HBI_INLINE inline
#endif

template <typename acc_t>
HBI_INLINE acc_t dot_body(const acc_t* __restrict__ x, const acc_t* __restrict__ y, int64_t n) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < n; ++k) sum += x[k] * y[k];
  return sum;
}

template <typename acc_t>
HBI_INLINE void axpy_body(acc_t* __restrict__ out, acc_t alpha, const acc_t* __restrict__ x, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) out[k] += alpha * x[k];
}

// Column maxima (value, first arg-max row; -1 when no entry beats -inf) of a rows x cols matrix.
template <typename acc_t>
HBI_INLINE void column_maxima_body(const acc_t* __restrict__ matrix, int64_t rows, int64_t cols,
                                   acc_t* __restrict__ col_best, int32_t* __restrict__ col_arg) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  for (int64_t c = 0; c < cols; ++c) {
    col_best[c] = neg_inf;
    col_arg[c] = -1;
  }
  for (int64_t k = 0; k < rows; ++k) {
    const acc_t* __restrict__ row = matrix + k * cols;
    const int32_t kk = static_cast<int32_t>(k);
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const acc_t s = row[c];
      const bool greater = hbi::wti::beats(s, col_best[c]);
      col_best[c] = greater ? s : col_best[c];
      col_arg[c] = greater ? kk : col_arg[c];
    }
  }
}

#define HBI_DEFINE_HELPERS(acc_t)                                                                                 \
  HBI_MULTIVERSION acc_t dot(const acc_t* x, const acc_t* y, int64_t n) { return dot_body(x, y, n); }             \
  HBI_MULTIVERSION void axpy(acc_t* out, acc_t alpha, const acc_t* x, int64_t n) { axpy_body(out, alpha, x, n); } \
  HBI_MULTIVERSION void column_maxima(const acc_t* matrix, int64_t rows, int64_t cols, acc_t* col_best,           \
                                      int32_t* col_arg) {                                                         \
    column_maxima_body(matrix, rows, cols, col_best, col_arg);                                                    \
  }

HBI_DEFINE_HELPERS(float)
HBI_DEFINE_HELPERS(double)
#undef HBI_DEFINE_HELPERS

// ---------------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------------

// Real (unpadded) positions of every row of a mask [N, L]: positions[offset[n] .. offset[n+1]) in order.
struct RealPositions {
  std::vector<int64_t> offset;    // [N + 1]
  std::vector<int32_t> position;  // within the row (a word t or a frame v)
  std::vector<int64_t> flat;      // n * L + position: the row of the [N * L, D] features
};

RealPositions real_positions(const bool* mask, int64_t rows, int64_t length) {
  RealPositions out;
  out.offset.resize(rows + 1);
  out.offset[0] = 0;
  for (int64_t n = 0; n < rows; ++n) {
    for (int64_t l = 0; l < length; ++l) {
      if (mask[n * length + l]) {
        out.position.push_back(static_cast<int32_t>(l));
        out.flat.push_back(n * length + l);
      }
    }
    out.offset[n + 1] = static_cast<int64_t>(out.position.size());
  }
  return out;
}

// The rows of features [N, L, D] at the real positions, [R, D] (no copy when nothing is padded).
at::Tensor gather_real(const at::Tensor& features, const RealPositions& real) {
  const int64_t N = features.size(0), L = features.size(1), D = features.size(2);
  const at::Tensor flat = features.view({N * L, D});
  if (static_cast<int64_t>(real.flat.size()) == N * L) return flat;
  at::Tensor index = at::empty({static_cast<int64_t>(real.flat.size())}, features.options().dtype(at::kLong));
  std::copy(real.flat.begin(), real.flat.end(), index.data_ptr<int64_t>());
  return flat.index_select(0, index);
}

// Only real words and real frames enter the GEMM: padded entries of S are either irrelevant ("ignore") or
// known to be 0 ("zero"), so the work is proportional to (real words) x (real frames).
template <typename acc_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& p, const at::Tensor& q,
                    const at::Tensor& word_mask, const at::Tensor& frame_mask, bool zero_padding, at::Tensor& score,
                    at::Tensor& t2v_argmax, at::Tensor& v2t_argmax) {
  const int64_t A = x.size(0), T = x.size(1);
  const int64_t B = y.size(0), V = y.size(1);
  const acc_t* p_ptr = p.const_data_ptr<acc_t>();
  const acc_t* q_ptr = q.const_data_ptr<acc_t>();
  acc_t* score_ptr = score.data_ptr<acc_t>();
  int32_t* t2v_ptr = t2v_argmax.data_ptr<int32_t>();
  int32_t* v2t_ptr = v2t_argmax.data_ptr<int32_t>();

  const RealPositions words = real_positions(word_mask.const_data_ptr<bool>(), A, T);
  const RealPositions frames = real_positions(frame_mask.const_data_ptr<bool>(), B, V);
  const int64_t real_frames = frames.offset[B];
  const at::Tensor x_real = gather_real(x, words);         // [real words, D]
  const at::Tensor y_real_t = gather_real(y, frames).t();  // [D, real frames]
  for (int64_t a0 = 0; a0 < A;) {
    // A block of texts whose S holds at most kBlockEntries dot products (at least one text).
    int64_t a1 = a0 + 1;
    while (a1 < A && (words.offset[a1 + 1] - words.offset[a0]) * real_frames <= kBlockEntries) ++a1;
    const int64_t row0 = words.offset[a0];
    const at::Tensor sim = at::mm(x_real.narrow(0, row0, words.offset[a1] - row0), y_real_t);
    const acc_t* s_ptr = sim.const_data_ptr<acc_t>();  // [block real words, real frames]
    // One text per task: the column maxima of all its frames at once (vectorised), then its pairs.
    at::parallel_for(a0, a1, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> col_best(real_frames);
      std::vector<int32_t> col_arg(real_frames);
      for (int64_t a = begin; a < end; ++a) {
        const int64_t w0 = words.offset[a], num_words = words.offset[a + 1] - w0;
        const int32_t* word_at = words.position.data() + w0;        // compact word k -> word t
        const acc_t* text_sim = s_ptr + (w0 - row0) * real_frames;  // [num_words, real frames]
        const acc_t* p_a = p_ptr + a * T;
        column_maxima(text_sim, num_words, real_frames, col_best.data(), col_arg.data());
        for (int64_t b = 0; b < B; ++b) {
          const int64_t pair = a * B + b;
          const int64_t f0 = frames.offset[b], num_frames = frames.offset[b + 1] - f0;
          const int32_t* frame_at = frames.position.data() + f0;  // compact frame c -> frame v
          const acc_t* q_b = q_ptr + b * V;
          int32_t* t2v_out = t2v_ptr + pair * T;
          int32_t* v2t_out = v2t_ptr + pair * V;
          std::fill(t2v_out, t2v_out + T, -1);  // padded words and frames keep -1
          std::fill(v2t_out, v2t_out + V, -1);
          // In zero mode a masked 0 competes in a maximum when the other side has a padded position.
          const bool zero_in_rows = hbi::wti::zero_competes(zero_padding, num_frames, V);
          const bool zero_in_cols = hbi::wti::zero_competes(zero_padding, num_words, T);

          acc_t text_to_video = 0;
          for (int64_t k = 0; k < num_words; ++k) {
            const acc_t* row = text_sim + k * real_frames + f0;  // S[a, b, word_at[k], frame_at[c]]
            acc_t best;
            const int64_t arg =
                hbi::wti::first_max(num_frames, [&](int64_t c) { return row[c]; }, [](int64_t) { return true; }, best);
            if (!hbi::wti::kept_maximum(arg, best, zero_in_rows)) continue;  // the maximum is not a real entry
            const int32_t t = word_at[k];
            t2v_out[t] = frame_at[arg];
            text_to_video += p_a[t] * best;
          }
          acc_t video_to_text = 0;
          for (int64_t c = 0; c < num_frames; ++c) {
            const int32_t k = col_arg[f0 + c];
            const acc_t best = col_best[f0 + c];
            if (!hbi::wti::kept_maximum(k, best, zero_in_cols)) continue;
            const int32_t v = frame_at[c];
            v2t_out[v] = word_at[k];
            video_to_text += q_b[v] * best;
          }
          score_ptr[pair] = (text_to_video + video_to_text) / 2;
        }
      }
    });
    a0 = a1;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> wti_similarity_cpu(const at::Tensor& text, const at::Tensor& video,
                                                                  const at::Tensor& text_weight,
                                                                  const at::Tensor& video_weight,
                                                                  const at::Tensor& text_mask,
                                                                  const at::Tensor& video_mask, bool zero_padding) {
  check_float_cpu(text, "text", 3);
  check_float_cpu(video, "video", 3);
  const int64_t A = text.size(0), T = text.size(1), D = text.size(2);
  const int64_t B = video.size(0), V = video.size(1);
  TORCH_CHECK(video.size(2) == D, "wti_similarity: video must have the feature width D = ", D,
              " of text (shape [B, V, ", D, "]), got shape ", video.sizes());
  check_weights(text, video, text_weight, video_weight);
  for (auto [mask, name, expected] : {std::make_tuple(&text_mask, "text_mask", std::vector<int64_t>{A, T}),
                                      std::make_tuple(&video_mask, "video_mask", std::vector<int64_t>{B, V})}) {
    TORCH_CHECK(mask->defined(), "wti_similarity: ", name, " is undefined");
    TORCH_CHECK(mask->device().is_cpu(), "wti_similarity (cpu kernel): ", name, " must be a CPU tensor, got ",
                mask->device());
    TORCH_CHECK(mask->scalar_type() == at::kBool, "wti_similarity: ", name, " must be a bool tensor, got ",
                mask->scalar_type());
    check_shape(*mask, name, expected);
  }
  TORCH_CHECK(T < std::numeric_limits<int32_t>::max() && V < std::numeric_limits<int32_t>::max(),
              "wti_similarity: too many words or frames for int32 arg-max indices");

  const auto dtype = text.scalar_type();
  at::Tensor score = at::empty({A, B}, text.options());
  at::Tensor t2v_argmax = at::empty({A, B, T}, text.options().dtype(at::kInt));
  at::Tensor v2t_argmax = at::empty({A, B, V}, text.options().dtype(at::kInt));
  if (A == 0 || B == 0) return {score, t2v_argmax, v2t_argmax};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "wti_similarity_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = text.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const at::Tensor x = text.to(acc).contiguous();
    const at::Tensor y = video.to(acc).contiguous();
    const at::Tensor p = text_weight.to(acc).contiguous();
    const at::Tensor q = video_weight.to(acc).contiguous();
    at::Tensor score_acc = at::empty({A, B}, acc);
    forward_kernel<acc_t>(x, y, p, q, text_mask.contiguous(), video_mask.contiguous(), zero_padding, score_acc,
                          t2v_argmax, v2t_argmax);
    score.copy_(score_acc);
  });
  return {score, t2v_argmax, v2t_argmax};
}

// ---------------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------------

// One pass of the backward ("own" items n with rows r, "other" items m with rows l; pair (n, m) at
// n * ps_own + m * ps_oth), over blocks of own items, other items outermost inside a block so one other item's
// rows stay in cache. own_idx[pair, r]: the other row of own row r (-1: none); oth_idx[pair, l]: the own row
// of other row l. With c = grad_score[pair] / 2:
//   Z[n,r] = sum_m c F_oth[m, own_idx]     grad_w_own[n,r] = <F_own[n,r], Z[n,r]>
//   grad_own[n,r] = w_own[n,r] Z[n,r] + sum_{m, l: oth_idx = r} c w_oth[m,l] F_oth[m,l]
template <typename acc_t>
void backward_side(const acc_t* g, const acc_t* own, const acc_t* own_w, const acc_t* oth, const acc_t* oth_w,
                   const int32_t* own_idx, const int32_t* oth_idx, int64_t n_own, int64_t L_own, int64_t n_oth,
                   int64_t L_oth, int64_t D, int64_t ps_own, int64_t ps_oth, acc_t* grad_own, acc_t* grad_own_w) {
  at::parallel_for(0, n_own, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(kCacheBlock * L_own * D);
    for (int64_t n0 = begin; n0 < end; n0 += kCacheBlock) {
      const int64_t n1 = std::min(end, n0 + kCacheBlock);
      std::fill(z.begin(), z.end(), acc_t(0));
      for (int64_t m = 0; m < n_oth; ++m) {
        const acc_t* oth_m = oth + m * L_oth * D;
        const acc_t* oth_w_m = oth_w + m * L_oth;
        for (int64_t n = n0; n < n1; ++n) {
          const int64_t pair = n * ps_own + m * ps_oth;
          const acc_t c = g[pair] / 2;
          if (c == 0) continue;
          const int32_t* i = own_idx + pair * L_own;
          const int32_t* j = oth_idx + pair * L_oth;
          acc_t* z_n = z.data() + (n - n0) * L_own * D;
          for (int64_t r = 0; r < L_own; ++r) {
            if (i[r] >= 0) axpy(z_n + r * D, c, oth_m + i[r] * D, D);
          }
          for (int64_t l = 0; l < L_oth; ++l) {
            if (j[l] >= 0) axpy(grad_own + (n * L_own + j[l]) * D, c * oth_w_m[l], oth_m + l * D, D);
          }
        }
      }
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t r = 0; r < L_own; ++r) {
          const acc_t* z_nr = z.data() + ((n - n0) * L_own + r) * D;
          grad_own_w[n * L_own + r] = dot(own + (n * L_own + r) * D, z_nr, D);
          axpy(grad_own + (n * L_own + r) * D, own_w[n * L_own + r], z_nr, D);
        }
      }
    }
  });
}

// With c = grad_score[a, b] / 2, i = t2v_argmax, j = v2t_argmax:
//   Z[a,t] = sum_b c Y[b, i(a,b,t)]              grad_p[a,t] = <X[a,t], Z[a,t]>
//   grad_X[a,t] = p[a,t] Z[a,t] + sum_{b, v: j(a,b,v) = t} c q[b,v] Y[b,v]
//   W[b,v] = sum_a c X[a, j(a,b,v)]              grad_q[b,v] = <Y[b,v], W[b,v]>
//   grad_Y[b,v] = q[b,v] W[b,v] + sum_{a, t: i(a,b,t) = v} c p[a,t] X[a,t]
// Pass 1 owns blocks of texts (grad_X, grad_p), pass 2 blocks of videos (grad_Y, grad_q): no shared writes.
template <typename acc_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const at::Tensor& p,
                     const at::Tensor& q, const at::Tensor& t2v_argmax, const at::Tensor& v2t_argmax,
                     at::Tensor& grad_x, at::Tensor& grad_y, at::Tensor& grad_p, at::Tensor& grad_q) {
  const int64_t A = x.size(0), T = x.size(1), D = x.size(2);
  const int64_t B = y.size(0), V = y.size(1);
  const acc_t* g = grad.const_data_ptr<acc_t>();
  const acc_t* x_ptr = x.const_data_ptr<acc_t>();
  const acc_t* y_ptr = y.const_data_ptr<acc_t>();
  const acc_t* p_ptr = p.const_data_ptr<acc_t>();
  const acc_t* q_ptr = q.const_data_ptr<acc_t>();
  const int32_t* t2v = t2v_argmax.const_data_ptr<int32_t>();
  const int32_t* v2t = v2t_argmax.const_data_ptr<int32_t>();
  acc_t* gx = grad_x.data_ptr<acc_t>();
  acc_t* gy = grad_y.data_ptr<acc_t>();
  acc_t* gp = grad_p.data_ptr<acc_t>();
  acc_t* gq = grad_q.data_ptr<acc_t>();

  // Pass 1 owns texts: own rows t, own index t2v, other index v2t; pair (a, b) = a*B + b.
  backward_side(g, x_ptr, p_ptr, y_ptr, q_ptr, t2v, v2t, A, T, B, V, D, B, 1, gx, gp);
  // Pass 2 owns videos: own rows v, own index v2t, other index t2v; pair (b, a) = a*B + b.
  backward_side(g, y_ptr, q_ptr, x_ptr, p_ptr, v2t, t2v, B, V, A, T, D, 1, B, gy, gq);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> wti_similarity_backward_cpu(
    const at::Tensor& grad_score, const at::Tensor& text, const at::Tensor& video, const at::Tensor& text_weight,
    const at::Tensor& video_weight, const at::Tensor& t2v_argmax, const at::Tensor& v2t_argmax) {
  check_float_cpu(text, "text", 3);
  check_float_cpu(video, "video", 3);
  const int64_t A = text.size(0), T = text.size(1), D = text.size(2);
  const int64_t B = video.size(0), V = video.size(1);
  TORCH_CHECK(video.size(2) == D, "wti_similarity_backward: video must have the feature width D = ", D,
              " of text, got shape ", video.sizes());
  check_weights(text, video, text_weight, video_weight);
  check_float_cpu(grad_score, "grad_score", 2);
  check_shape(grad_score, "grad_score", {A, B});
  check_index_cpu(t2v_argmax, "t2v_argmax", {A, B, T}, V);
  check_index_cpu(v2t_argmax, "v2t_argmax", {A, B, V}, T);

  at::Tensor grad_text, grad_video, grad_text_weight, grad_video_weight;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, text.scalar_type(), "wti_similarity_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = text.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    at::Tensor gx = at::zeros({A, T, D}, acc);
    at::Tensor gy = at::zeros({B, V, D}, acc);
    at::Tensor gp = at::zeros({A, T}, acc);
    at::Tensor gq = at::zeros({B, V}, acc);
    if (A > 0 && B > 0) {
      backward_kernel<acc_t>(grad_score.to(acc).contiguous(), text.to(acc).contiguous(), video.to(acc).contiguous(),
                             text_weight.to(acc).contiguous(), video_weight.to(acc).contiguous(),
                             t2v_argmax.contiguous(), v2t_argmax.contiguous(), gx, gy, gp, gq);
    }
    grad_text = gx.to(text.scalar_type());
    grad_video = gy.to(text.scalar_type());
    grad_text_weight = gp.to(text.scalar_type());
    grad_video_weight = gq.to(text.scalar_type());
  });
  return {grad_text, grad_video, grad_text_weight, grad_video_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(hbi_ops, CPU, m) {
  m.impl("wti_similarity", &wti_similarity_cpu);
  m.impl("wti_similarity_backward", &wti_similarity_backward_cpu);
}
