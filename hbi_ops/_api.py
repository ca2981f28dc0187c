"""The public operators of docs/: check arguments once, pick a backend, call it."""

import torch

from hbi_ops import _checks, _dispatch

MAX_EXACT_PLAYERS = 24
DEFINITIONS = ("textbook", "reference")
ESTIMATORS = ("exact", "paired", "msr")
PADDINGS = ("ignore", "zero")


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
    _checks.tensor("text", text, dim=3, floating=True)
    _checks.tensor("video", video, dim=3, floating=True)
    num_texts, num_words, width = text.shape
    num_videos, num_frames, _ = video.shape
    _checks.shape("video", video, (None, None, width))
    _checks.tensor("text_weight", text_weight, floating=True)
    _checks.shape("text_weight", text_weight, (num_texts, num_words))
    _checks.tensor("video_weight", video_weight, floating=True)
    _checks.shape("video_weight", video_weight, (num_videos, num_frames))
    _checks.same_device(
        "text",
        text,
        video=video,
        text_weight=text_weight,
        video_weight=video_weight,
        text_mask=text_mask,
        video_mask=video_mask,
    )
    text_mask = _checks.mask("text_mask", text_mask, (num_texts, num_words), text)
    video_mask = _checks.mask("video_mask", video_mask, (num_videos, num_frames), text)
    _checks.choice("padding", padding, PADDINGS)
    dtype = _checks.common_float_dtype(text, video, text_weight, video_weight)
    # Weights of padded tokens never count, whatever they hold.
    text_weight = text_weight.masked_fill(~text_mask, 0.0)
    video_weight = video_weight.masked_fill(~video_mask, 0.0)
    score = _dispatch.call(
        "wti_similarity",
        text.device,
        backend,
        text.to(dtype),
        video.to(dtype),
        text_weight.to(dtype),
        video_weight.to(dtype),
        text_mask,
        video_mask,
        padding == "zero",
    )
    # A non-finite feature or weight at a real position makes every score of its text (video) NaN, in every
    # backend alike (a maximum would otherwise drop a NaN); padded positions never matter.
    broken_text = _nonfinite_at_real(text, text_weight, text_mask)
    broken_video = _nonfinite_at_real(video, video_weight, video_mask)
    return score.masked_fill(broken_text[:, None] | broken_video[None, :], float("nan"))


def _nonfinite_at_real(features, weights, mask):
    """[N] bool: whether sample n has a NaN or infinite feature or weight at a real token."""
    bad = ~(torch.isfinite(features).all(-1) & torch.isfinite(weights))
    return (bad & mask).any(-1)


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
    _checks.tensor("sim", sim, dim=3, floating=True)
    batch, num_words, num_frames = sim.shape
    _checks.same_device(
        "sim", sim, text_mask=text_mask, video_mask=video_mask, text_weight=text_weight, video_weight=video_weight
    )
    text_mask = _checks.mask("text_mask", text_mask, (batch, num_words), sim)
    video_mask = _checks.mask("video_mask", video_mask, (batch, num_frames), sim)
    text_weight = _checks.floating_or_default("text_weight", text_weight, (batch, num_words), sim, 0.0)
    video_weight = _checks.floating_or_default("video_weight", video_weight, (batch, num_frames), sim, 0.0)
    _checks.choice("definition", definition, DEFINITIONS)
    estimator_given = estimator is not None
    estimator = "exact" if estimator is None else estimator
    _checks.choice("estimator", estimator, ESTIMATORS)
    if estimator == "msr" and definition == "reference":
        raise ValueError(
            "estimator='msr' needs a coalition value, which definition='reference' does not "
            "have (its value1 is not one); use estimator='paired' or 'exact'"
        )
    num_samples = _checks.integer("num_samples", num_samples, low=1, high=2**31 - 1)
    seed = _checks.integer("seed", seed, low=0, high=2**64 - 1)
    if seed >= 2**63:  # the op schema carries a signed int64; the kernels read it back as uint64
        seed -= 2**64
    if estimator == "exact" and definition == "reference":
        _check_exact_players(text_mask, video_mask, estimator_given)
    dtype = _checks.common_float_dtype(sim, text_weight, video_weight)
    return _dispatch.call(
        "banzhaf_interaction",
        sim.device,
        backend,
        sim.to(dtype),
        text_mask,
        video_mask,
        text_weight.to(dtype),
        video_weight.to(dtype),
        definition,
        estimator,
        num_samples,
        seed,
    )


def _check_exact_players(text_mask, video_mask, estimator_given=True):
    """definition='reference' has no closed form: its exact estimator enumerates 2^n coalitions."""
    num_words, num_frames = text_mask.shape[1], video_mask.shape[1]
    if num_words + num_frames <= MAX_EXACT_PLAYERS or text_mask.shape[0] == 0:
        return  # no pair can exceed the limit: no need to read the masks
    if not _checks.readable(text_mask):
        return  # meta/fake tensors, torch.compile, torch.func: the kernels check the count themselves
    players = text_mask.sum(1) + video_mask.sum(1)
    worst = int(players.argmax())
    if int(players[worst]) > MAX_EXACT_PLAYERS:
        how = "estimator='exact'" if estimator_given else "the default estimator ('exact')"
        raise ValueError(
            f"definition='reference' has no closed form: {how} enumerates all 2^n coalitions and takes at "
            f"most {MAX_EXACT_PLAYERS} players per pair; pair {worst} has {int(players[worst])} "
            f"({int(text_mask[worst].sum())} words + {int(video_mask[worst].sum())} frames): pass "
            f"estimator='paired' (with num_samples and seed)"
        )


def dpc_knn(x, num_clusters, k=5, mask=None, *, backend=None):
    """Density-peaks clustering with k-nearest-neighbour density of tokens x [B, N, C].

    Returns (idx [B, N], centers [B, K]), int64: the cluster of every token and the token index of every
    cluster's centre, centres ordered by decreasing score. Deterministic tie rules; padded tokens
    (mask 0) never change the result of the real ones of their sample, whatever they hold. A sample with
    a non-finite feature at a real token still gets valid indices, but which ones is not specified (and
    may differ between backends). No gradient.
    """
    _checks.tensor("x", x, dim=3, floating=True)
    batch, num_tokens, width = x.shape
    if width < 1:
        raise ValueError(f"x must have at least one feature (shape [B, N, C] with C >= 1), got {list(x.shape)}")
    num_clusters = _checks.integer("num_clusters", num_clusters, low=1, high=num_tokens)
    k = _checks.integer("k", k, low=1, high=num_tokens)
    _checks.same_device("x", x, mask=mask)
    mask = _checks.mask("mask", mask, (batch, num_tokens), x)
    # Padding never matters: whatever padded tokens hold (NaN, inf) is replaced before any backend runs.
    x = x.masked_fill(~mask[..., None], 0.0)
    return _dispatch.call("dpc_knn", x.device, backend, x, mask, num_clusters, k)


def merge_tokens(x, idx, num_clusters, weight=None, *, backend=None):
    """out[b, c] = sum over tokens n of cluster c of w_n x_n / (sum of w_n + 1e-6); [B, K, C].

    idx: [B, N] integer cluster of each token, in 0..K-1; weight: [B, N] (None = 1).
    Differentiable in x and weight.
    """
    _checks.tensor("x", x, dim=3, floating=True)
    batch, num_tokens, _ = x.shape
    _checks.tensor("idx", idx)
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"idx must be an integer tensor, got {idx.dtype}")
    _checks.shape("idx", idx, (batch, num_tokens))
    num_clusters = _checks.integer("num_clusters", num_clusters, low=1)
    _checks.same_device("x", x, idx=idx, weight=weight)
    weight = _checks.floating_or_default("weight", weight, (batch, num_tokens), x, 1.0)
    # Reading idx on a GPU would synchronise, and under torch.compile it would break the graph: there the
    # cuda and triton kernels fail a device-side assertion instead (the error surfaces at the next sync).
    if idx.device.type == "cpu" and idx.numel() > 0 and _checks.readable(idx):
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= num_clusters:
            raise ValueError(
                f"idx must hold cluster indices in [0, {num_clusters - 1}] (num_clusters="
                f"{num_clusters}), got values in [{low}, {high}]"
            )
    dtype = _checks.common_float_dtype(x, weight)
    return _dispatch.call(
        "merge_tokens", x.device, backend, x.to(dtype), idx.to(torch.int64), weight.to(dtype), num_clusters
    )


def backends():
    """Names of the backends that can run here, in the default order of preference."""
    return _dispatch.available_backends()
