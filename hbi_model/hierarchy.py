"""Token clustering and merging (CTM) and the attention that refines merged tokens (TCBlock), on
hbi_ops.dpc_knn and hbi_ops.merge_tokens (SPEC section 2, "Three levels")."""

import contextlib
import math

from torch import nn

import hbi_ops


def num_clusters(num_tokens, ratio):
    return max(math.ceil(num_tokens * ratio), 1)


class CTM(nn.Module):
    """x <- LayerNorm(x + Conv1d(x)); score = Linear(x) (-inf at padding); weight = exp(score);
    dpc_knn(k) clusters the normalised tokens and merge_tokens averages each cluster by weight."""

    def __init__(self, width, ratio, k=3):
        super().__init__()
        self.ratio, self.k = ratio, k
        self.conv = nn.Conv1d(width, width, kernel_size=3, padding=1, bias=False)
        self.norm = nn.LayerNorm(width)
        self.score = nn.Linear(width, 1)

    def forward(self, x, mask=None):
        """x [B, N, C], mask [B, N] bool or None -> (merged [B, K, C], tokens [B, N, C], score [B, N], idx)."""
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        tokens = self.norm(x)
        score = self.score(tokens).squeeze(-1)
        if mask is not None:
            # A row with no real token (an unreadable video) is merged over its padding: a score of -inf
            # everywhere would make the TCBlock's attention over it NaN.
            mask = mask | ~mask.any(1, keepdim=True)
            score = score.masked_fill(~mask, float("-inf"))
        clusters = num_clusters(x.shape[1], self.ratio)
        idx, _centers = hbi_ops.dpc_knn(tokens.detach(), clusters, k=min(self.k, x.shape[1]), mask=mask)
        merged = hbi_ops.merge_tokens(tokens, idx, clusters, score.exp())
        return merged, tokens, score, idx


class TCBlock(nn.Module):
    """Merged tokens attend to the CTM's normalised tokens (one LayerNorm shared by both); the logits get
    the key's score added (padded keys, score -inf, get no weight); one residual, no MLP."""

    def __init__(self, width, heads=8):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, merged, tokens, score):
        batch, clusters, width = merged.shape
        head_dim = width // self.heads
        q = self.q(self.norm(merged)).view(batch, clusters, self.heads, head_dim).transpose(1, 2)
        k, v = self.kv(self.norm(tokens)).view(batch, tokens.shape[1], 2, self.heads, head_dim).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + score[:, None, None, :]
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, clusters, width)
        return merged + self.proj(out)


class Level(nn.Module):
    """One step up the hierarchy on one side: CTM then TCBlock."""

    def __init__(self, width, ratio, k=3, heads=8):
        super().__init__()
        self.ctm = CTM(width, ratio, k)
        self.block = TCBlock(width, heads)

    def forward(self, x, mask=None):
        merged, tokens, score, _ = self.ctm(x, mask)
        return self.block(merged, tokens, score)


@contextlib.contextmanager
def recording_assignments(levels):
    """Within the block, assignments[i] is the dpc_knn cluster of every token, idx [B, N], that levels[i]
    computed in its latest forward. Forward hooks that exist only inside the block: outside it the
    levels run exactly as before, at no cost."""
    assignments = [None] * len(levels)

    def keep(position):
        def hook(_module, _inputs, outputs):
            assignments[position] = outputs[3].detach()

        return hook

    handles = [level.ctm.register_forward_hook(keep(i)) for i, level in enumerate(levels)]
    try:
        yield assignments
    finally:
        for handle in handles:
            handle.remove()
