"""The Banzhaf interaction by brute force, written from the definitions with Python loops and floats,
independent of the package: the check of the oracle and of every backend's exact estimators."""

import itertools
import math

import torch


def _softmax(logits):
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    return [e / sum(exps) for e in exps]


def textbook_value(R, wt, wv, words, frames):
    if not words or not frames:
        return 0.0
    a, c = _softmax([wt[t] for t in words]), _softmax([wv[v] for v in frames])
    text = sum(a_t * max(R[t][v] for v in frames) for a_t, t in zip(a, words))
    video = sum(c_v * max(R[t][v] for t in words) for c_v, v in zip(c, frames))
    return 0.5 * (text + video)


def _reference_wti(M, text_logits, video_logits):
    T, V = len(M), len(M[0])
    a, c = _softmax(text_logits), _softmax(video_logits)
    return 0.5 * (
        sum(a[t] * max(M[t]) for t in range(T)) + sum(c[v] * max(M[t][v] for t in range(T)) for v in range(V))
    )


def reference_F(R, wt, wv, words, frames):
    T, V = len(R), len(R[0])
    M = [[R[t][v] if (t in words and v in frames) else 0.0 for v in range(V)] for t in range(T)]
    return _reference_wti(
        M, [wt[t] if t in words else -9e15 for t in range(T)], [wv[v] if v in frames else -9e15 for v in range(V)]
    )


def reference_value1(R, wt, wv, words, frames, i, j):
    T, V = len(R), len(R[0])
    M = [[R[t][v] if (t in words and v in frames) else 0.0 for v in range(V)] for t in range(T)]
    M[i][j] = R[i][j]
    p = _softmax([wt[t] if t in words else -9e15 for t in range(T)])
    q = _softmax([wv[v] if v in frames else -9e15 for v in range(V)])
    text_logits = [p[t] if t in words else (wt[i] if t == i else -9e15) for t in range(T)]
    video_logits = [q[v] if v in frames else (wv[j] if v == j else -9e15) for v in range(V)]
    return _reference_wti(M, text_logits, video_logits)


def cell_delta(definition, R, wt, wv, words, frames, i, j):
    if definition == "textbook":
        f = lambda ws, fs: textbook_value(R, wt, wv, ws, fs)  # noqa: E731
        return f(words + [i], frames + [j]) - f(words + [i], frames) - f(words, frames + [j]) + f(words, frames)
    F = lambda ws, fs: reference_F(R, wt, wv, ws, fs)  # noqa: E731
    return (
        reference_value1(R, wt, wv, words, frames, i, j)
        - F(words + [i], frames)
        - F(words, frames + [j])
        + F(words, frames)
    )


def subsets(items):
    for r in range(len(items) + 1):
        yield from itertools.combinations(items, r)


def brute_force_deltas(definition, R, wt, wv, real_words, real_frames, i, j):
    """Every second-order difference of cell (i, j): one per c subset of N minus {i, j}."""
    others = [("w", t) for t in real_words if t != i] + [("f", v) for v in real_frames if v != j]
    deltas = []
    for subset in subsets(others):
        words = [k for kind, k in subset if kind == "w"]
        frames = [k for kind, k in subset if kind == "f"]
        deltas.append(cell_delta(definition, R, wt, wv, words, frames, i, j))
    return deltas


def brute_force(definition, sim, text_mask, video_mask, text_weight, video_weight):
    """I(i, j) = 2^-(n-2) sum over c of N minus {i, j} of the second-order difference, as [B, T, V]."""
    out = torch.zeros(sim.shape, dtype=torch.float64)
    for b in range(sim.shape[0]):
        R, wt, wv = sim[b].tolist(), text_weight[b].tolist(), video_weight[b].tolist()
        words = [t for t in range(sim.shape[1]) if text_mask[b, t]]
        frames = [v for v in range(sim.shape[2]) if video_mask[b, v]]
        for i in words:
            for j in frames:
                deltas = brute_force_deltas(definition, R, wt, wv, words, frames, i, j)
                out[b, i, j] = sum(deltas) / len(deltas)
    return out
