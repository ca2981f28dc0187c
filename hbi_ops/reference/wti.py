"""Weighted token-wise interaction (WTI) score in plain PyTorch: the oracle of docs/wti.md."""

import torch


def wti_similarity(text, video, text_weight, video_weight, text_mask, video_mask, zero_padding):
    """WTI score[a, b] of texts X [A, T, D] and videos Y [B, V, D]; written to be read, not to be fast.

    Arguments are already normalised by hbi_ops.ops.wti.arguments: X, Y, p = text_weight [A, T] and
    q = video_weight [B, V] share one float dtype; text_mask [A, T] and video_mask [B, V] are bool
    (True = real token); zero_padding is a bool.

        S[a,b,t,v] = < X[a,t], Y[b,v] >
        t2v[a,b]   = sum_t p[a,t] * max_v S[a,b,t,v]
        v2t[a,b]   = sum_v q[b,v] * max_t S[a,b,t,v]
        score[a,b] = (t2v[a,b] + v2t[a,b]) / 2

    Padding:
      zero_padding=False ("ignore"): the maxima run over real tokens only; a maximum over no real
        token counts as 0.
      zero_padding=True ("zero", what the authors' code does): S is multiplied by
        text_mask[a,t] * video_mask[b,v] and the maxima run over all positions, those zeros included.
      In both modes a padded word t contributes 0 to t2v and a padded frame v contributes 0 to v2t
      (in zero mode this follows from the zero rows; in ignore mode it is applied explicitly), so
      p and q get zero gradient at padded positions.

    Gradients flow to X, Y, p and q through the arg-max entries of S (torch.max with indices).
    This materialises S [A, B, T, V]; float16/bfloat16 inputs are computed in float32 (float64 stays
    float64) and the score is returned in the input dtype.
    """
    dtype = text.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    x, y = text.to(compute), video.to(compute)
    p, q = text_weight.to(compute), video_weight.to(compute)
    word = text_mask.bool()[:, None, :, None]  # [A, 1, T, 1]
    frame = video_mask.bool()[None, :, None, :]  # [1, B, 1, V]

    sim = torch.einsum("atd,bvd->abtv", x, y)  # [A, B, T, V]
    if sim.shape[2] == 0 or sim.shape[3] == 0:  # no words or no frames: every maximum is over nothing
        return sim.new_zeros(sim.shape[:2]).to(dtype)

    if zero_padding:
        sim = sim.masked_fill(~(word & frame), 0.0)
        best_frame = sim.max(dim=3).values  # [A, B, T]; a padded word's row is all zeros
        best_word = sim.max(dim=2).values  # [A, B, V]; a padded frame's column is all zeros
    else:
        # Maxima over real tokens only: padded entries can never win; a row with no real token gives -inf,
        # which is replaced by 0 (masked_fill, not a product, so no inf * 0 = nan and no gradient there).
        best_frame = sim.masked_fill(~frame, float("-inf")).max(dim=3).values
        best_word = sim.masked_fill(~word, float("-inf")).max(dim=2).values
        # Padded words (frames) contribute nothing, and a maximum over no real token counts as 0.
        best_frame = best_frame.masked_fill(~(word[..., 0] & frame.any(dim=3)), 0.0)
        best_word = best_word.masked_fill(~(frame[:, :, 0, :] & word.any(dim=2)), 0.0)

    text_to_video = (p[:, None, :] * best_frame).sum(dim=2)  # [A, B]
    video_to_text = (q[None, :, :] * best_word).sum(dim=2)  # [A, B]
    return ((text_to_video + video_to_text) / 2).to(dtype)
