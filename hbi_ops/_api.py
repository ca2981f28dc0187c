"""The public operators of docs/: their arguments checked by hbi_ops.ops.<op>, a backend chosen, called."""

from hbi_ops import _dispatch, ops


def wti_similarity(
    text, video, text_weight, video_weight, text_mask=None, video_mask=None, *, padding="ignore", backend=None
):
    """Weighted token-wise similarity score[a, b] of texts [A, T, D] and videos [B, V, D].

    score = (sum_t p[a,t] max_v S[a,b,t,v] + sum_v q[b,v] max_t S[a,b,t,v]) / 2, S = <text, video>.
    padding="ignore": maxima over real tokens only; "zero": the reference's zero-filled maxima.
    Returns [A, B] in the promoted dtype of the inputs; differentiable in all four float inputs. Padded
    tokens never matter; a NaN or infinite feature or weight at a real token makes its text's (video's)
    scores NaN.
    """
    args = ops.wti.arguments(text, video, text_weight, video_weight, text_mask, video_mask, padding)
    return ops.wti.finish(_dispatch.call(ops.wti.NAME, text.device, backend, *args), args)


def banzhaf_interaction(
    sim,
    text_mask=None,
    video_mask=None,
    text_weight=None,
    video_weight=None,
    *,
    definition="textbook",
    estimator=None,
    num_samples=1000,
    seed=0,
    backend=None,
):
    """Banzhaf interaction I[b, t, v] of word t and frame v in the WTI game of each pair b.

    sim: [B, T, V] similarity map of each matched pair; masks [B, T] / [B, V] (None = all real);
    text_weight / video_weight: weight logits [B, T] / [B, V] (None = uniform).
    definition: "textbook" (Grabisch-Roubens index of the WTI game) or "reference" (the authors'
    label generator). estimator (default "exact"): "exact" (textbook: the closed form, any number of
    players, no samples; reference: enumeration, at most 24 players per pair), "paired" (num_samples
    coalitions per cell, the four values each) or "msr" (each coalition evaluated once, stratified
    means; textbook only). Sampled coalitions come from Philox4x32-10 keyed by `seed`, identical in
    every backend. Zero at padded cells; differentiable in sim and both weights.
    """
    args = ops.banzhaf.arguments(
        sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
    )
    return _dispatch.call(ops.banzhaf.NAME, sim.device, backend, *args)


def dpc_knn(x, num_clusters, k=5, mask=None, *, backend=None):
    """Density-peaks clustering with k-nearest-neighbour density of tokens x [B, N, C].

    Returns (idx [B, N], centers [B, K]), int64: the cluster of every token and the token index of every
    cluster's centre, centres ordered by decreasing score. Deterministic tie rules; padded tokens
    (mask 0) never change the result of the real ones of their sample, whatever they hold. A sample with
    a non-finite feature at a real token still gets valid indices, but which ones is not specified (and
    may differ between backends). No gradient.
    """
    return _dispatch.call(ops.dpc_knn.NAME, x.device, backend, *ops.dpc_knn.arguments(x, num_clusters, k, mask))


def merge_tokens(x, idx, num_clusters, weight=None, *, backend=None):
    """out[b, c] = sum over tokens n of cluster c of w_n x_n / (sum of w_n + 1e-6); [B, K, C].

    idx: [B, N] integer cluster of each token, in 0..K-1; weight: [B, N] (None = 1).
    Differentiable in x and weight.
    """
    return _dispatch.call(ops.merge.NAME, x.device, backend, *ops.merge.arguments(x, idx, num_clusters, weight))


def backends():
    """Names of the backends that can run here, in the default order of preference."""
    return _dispatch.available_backends()
