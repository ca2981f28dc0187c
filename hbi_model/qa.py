"""Video question answering on the same hierarchy (SPEC section 2, "Video QA"): per level an answer
head; loss per level CE(answers) + 1/2 (contrastive + skl * banzhaf), plus kl * KL between the levels'
answer logits; prediction 0.4 entity + 0.4 action + 0.2 event."""

import torch
import torch.nn.functional as F
from torch import nn

from hbi_model.losses import info_nce, level_kl
from hbi_model.retrieval import LEVELS, HBIConfig, HBIRetrieval

PREDICTION_WEIGHTS = {"entity": 0.4, "action": 0.4, "event": 0.2}


QA_RATIOS = {"t_rate0": 0.25, "t_rate1": 0.125, "v_rate0": 0.25, "v_rate1": 0.25}  # text 1/4, 1/8; video 1/4, 1/4


def qa_config(**overrides):
    """HBIConfig with QA's cluster ratios (SPEC section 2, "Video QA")."""
    return HBIConfig(**{**QA_RATIOS, **overrides})


class AttentionPool(nn.Module):
    """Linear(D -> D) -> ReLU -> Linear(D -> 1), softmax over the (real) tokens, weighted sum."""

    def __init__(self, width):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))

    def forward(self, x, mask=None):
        """A row with no real token (an unreadable video) pools to 0; its logits stay finite, since an
        all -inf softmax would be NaN, and so would every gradient through it."""
        logits = self.score(x).squeeze(-1)
        if mask is None:
            return (logits.softmax(-1)[..., None] * x).sum(1)
        real = mask.any(-1, keepdim=True)
        weights = logits.masked_fill(~mask & real, float("-inf")).softmax(-1) * real
        return (weights[..., None] * x).sum(1)


class AnswerHead(nn.Module):
    """Pool words and frames, project each side to 4D (2048 for D=512), concatenate, dropout 0.1, then
    Linear(8D -> 16D) -> ReLU -> Linear(16D -> answers) (4096 -> 8192 -> answers for D=512)."""

    def __init__(self, width, num_answers, dropout=0.1):
        super().__init__()
        self.text_pool, self.video_pool = AttentionPool(width), AttentionPool(width)
        self.text_proj, self.video_proj = nn.Linear(width, 4 * width), nn.Linear(width, 4 * width)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Sequential(nn.Linear(8 * width, 16 * width), nn.ReLU(), nn.Linear(16 * width, num_answers))

    def forward(self, text, text_mask, video, video_mask):
        joint = torch.cat(
            [self.text_proj(self.text_pool(text, text_mask)), self.video_proj(self.video_pool(video, video_mask))], -1
        )
        return self.classifier(self.dropout(joint))


class HBIQA(HBIRetrieval):
    """The retrieval model's encoders, hierarchy, heads and Banzhaf supervision, plus an answer head per
    level (nothing copied: every shared module is the retrieval model's)."""

    def __init__(self, encoders, num_answers, config=None):
        super().__init__(encoders, config or qa_config())
        self.answer_heads = nn.ModuleList([AnswerHead(encoders.width, num_answers) for _ in LEVELS])

    def level_logits(self, text, text_mask, video, video_mask):
        out = {}
        for level, t, tm, v, vm in self.levels(text, text_mask, video, video_mask):
            out[level] = (self.answer_heads[LEVELS.index(level)](t, tm, v, vm), (t, tm, v, vm))
        return out

    def forward(self, input_ids, attention_mask, pixel_values, frame_mask, answer, gather=None):
        features = self.encode(input_ids, attention_mask, pixel_values, frame_mask)
        if gather is not None:
            features, answer = tuple(gather(f) for f in features), gather(answer)
        cfg, parts, total = self.config, {}, 0.0
        scale = self.encoders.logit_scale.exp().clamp(max=100)
        levels = self.level_logits(*features)
        for level, (logits, (t, tm, v, vm)) in levels.items():
            parts[f"answer/{level}"] = F.cross_entropy(logits, answer, ignore_index=-1)
            sim, extras = self.level_similarity(level, t, tm, v, vm)
            side = info_nce(sim, scale)
            if cfg.use_banzhaf and cfg.skl:
                side = side + cfg.skl * self.banzhaf_loss(level, tm, vm, *extras)
            total = total + parts[f"answer/{level}"] + 0.5 * side
        if cfg.kl and len(levels) > 1:
            cross = sum(level_kl(levels[level][0], levels["entity"][0]) for level in levels if level != "entity")
            parts["cross_level_kl"] = cross
            total = total + cfg.kl * cross
        self.step += 1
        parts["loss"] = total
        return parts

    @torch.no_grad()
    def predict(self, input_ids, attention_mask, pixel_values, frame_mask):
        """Answer logits: 0.4 entity + 0.4 action + 0.2 event (entity only without the hierarchy)."""
        levels = self.level_logits(*self.encode(input_ids, attention_mask, pixel_values, frame_mask))
        weights = PREDICTION_WEIGHTS if len(levels) > 1 else {"entity": 1.0}
        return sum(weights[level] * logits for level, (logits, _) in levels.items())
