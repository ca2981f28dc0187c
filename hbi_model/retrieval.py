"""The HBI video-text retrieval model (docs/model.md) on hbi_ops."""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import hbi_ops
from hbi_model.encoders import TemporalTransformer
from hbi_model.heads import BanzhafEstimator, WeightHead
from hbi_model.hierarchy import Level
from hbi_model.init import INITS, initialise
from hbi_model.losses import BANZHAF_REDUCTIONS, BANZHAF_TRANSPOSES, banzhaf_kl, info_nce, level_kl

LEVELS = ("entity", "action", "event")
NETWORK_LABEL_SCALE = 1000  # the reference trained its estimator network on labels of 1000 * R


@dataclass
class HBIConfig:
    max_words: int = 32
    max_frames: int = 12
    temporal_layers: int = 4
    temporal_heads: int = 8
    t_rate0: float = 0.25  # text clusters: 32 -> 8 -> 4
    v_rate0: float = 0.25  # video clusters: 12 -> 3 -> 2
    t_rate1: float = 0.5
    v_rate1: float = 0.5
    cluster_k: int = 3
    attention_heads: int = 8
    skl: float = 1.0  # Banzhaf loss coefficient (README runs of the reference)
    kl: float = 2.0  # cross-level KL coefficient (README runs; the reference's argparse default is 0.2)
    use_banzhaf: bool = True  # ablation: without the Banzhaf loss
    use_hierarchy: bool = True  # ablation: entity level only
    banzhaf_definition: str = "textbook"
    banzhaf_estimator: str = "exact"  # "paired" / "msr": sampled with banzhaf_samples coalitions a cell
    banzhaf_samples: int = 100  # sampled estimators, and the reference definition's teacher above exact_max_players
    exact_max_players: int = 14  # the reference definition's exact estimator enumerates up to this many players
    teacher_temperature: float = 1e-3  # targets = softmax(index / temperature); the reference's R x 1000 is 1e-3
    reference_weights: bool = False  # the reference's generator: weight-head probabilities fed as its logits
    banzhaf_reduction: str = "row"  # "element": the reference's F.kl_div(reduction="mean") per cell
    banzhaf_transpose: str = "words"  # "reference": its second term's .T, a softmax over the batch's pairs
    entity_padding: str = "ignore"  # "zero": the reference's zero-filled maxima at the entity level
    init: str = "reference"  # "pytorch": PyTorch's default initialisation of the new modules
    rates: tuple = field(default=(1.0, 0.0, 0.0))  # inference weights of entity, action, event

    def __post_init__(self):
        choices = {
            "banzhaf_definition": ("textbook", "reference"),
            "banzhaf_estimator": ("exact", "paired", "msr"),
            "banzhaf_reduction": BANZHAF_REDUCTIONS,
            "banzhaf_transpose": BANZHAF_TRANSPOSES,
            "entity_padding": ("ignore", "zero"),
            "init": INITS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.teacher_temperature > 0:
            raise ValueError(f"teacher_temperature must be positive, got {self.teacher_temperature}")
        if len(self.rates) != len(LEVELS):
            raise ValueError(f"rates must hold {len(LEVELS)} weights (entity, action, event), got {self.rates}")


class HBIRetrieval(nn.Module):
    def __init__(self, encoders, config=None):
        super().__init__()
        self.config = config = config or HBIConfig()
        self.encoders = encoders
        width = encoders.width
        self.temporal = TemporalTransformer(width, config.temporal_layers, config.temporal_heads, config.max_frames)
        heads = config.attention_heads
        self.text_levels = nn.ModuleList(
            [
                Level(width, config.t_rate0, config.cluster_k, heads),
                Level(width, config.t_rate1, config.cluster_k, heads),
            ]
        )
        self.video_levels = nn.ModuleList(
            [
                Level(width, config.v_rate0, config.cluster_k, heads),
                Level(width, config.v_rate1, config.cluster_k, heads),
            ]
        )
        self.text_heads = nn.ModuleList([WeightHead(width) for _ in LEVELS])
        self.video_heads = nn.ModuleList([WeightHead(width) for _ in LEVELS])
        self.students = nn.ModuleList([BanzhafEstimator() for _ in LEVELS])
        self.teacher = None  # optional pretrained estimator network (load_teacher)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64), persistent=True)
        initialise(self, config.init)

    def load_teacher(self, state_dict):
        """Use a pretrained estimator network as the teacher instead of hbi_ops.banzhaf_interaction.
        Keys may carry a module prefix (the reference's "banzhafteacher.cnn1.weight"); its unused
        BatchNorm ("bn.*") is ignored."""
        self.teacher = BanzhafEstimator().to(self.step.device)
        own = list(self.teacher.state_dict())
        state = {}
        for key, value in state_dict.items():
            match = [name for name in own if key == name or key.endswith("." + name)]
            if match:
                state[match[0]] = value
        missing = [name for name in own if name not in state]
        if missing:
            raise ValueError(f"the teacher's state dict lacks {missing} (it has {sorted(state_dict)[:8]}...)")
        self.teacher.load_state_dict(state)
        self.teacher.requires_grad_(False)

    # ---------------------------------------------------------------------------------------------
    def encode(self, input_ids, attention_mask, pixel_values, frame_mask):
        text = self.encoders.encode_text(input_ids, attention_mask)
        frames = self.encoders.encode_frames(pixel_values)
        video = self.temporal(frames, frame_mask)
        return text, attention_mask.bool(), video, frame_mask.bool()

    def levels(self, text, text_mask, video, video_mask, wanted=LEVELS):
        """[(level, text, text_mask, video, video_mask)] for the wanted levels (masks None above entity)."""
        out = [("entity", text, text_mask, video, video_mask)] if "entity" in wanted else []
        if not self.config.use_hierarchy or wanted == ("entity",):
            return out
        t_action = self.text_levels[0](text, text_mask)
        v_action = self.video_levels[0](video, video_mask)
        if "action" in wanted:
            out.append(("action", t_action, None, v_action, None))
        if "event" in wanted:
            out.append(("event", self.text_levels[1](t_action), None, self.video_levels[1](v_action), None))
        return out

    def _weights(self, level, text, text_mask, video, video_mask):
        """Weight logits, -inf at padding. A side with no real token at all (an unreadable video) keeps
        finite logits: an all -inf row would make its softmax, and every gradient through it, NaN; its
        weights then fall on padded tokens, which the similarity ignores."""
        index = LEVELS.index(level)
        wt, wv = self.text_heads[index](text), self.video_heads[index](video)
        if text_mask is not None:
            wt = wt.masked_fill(~text_mask & text_mask.any(-1, keepdim=True), float("-inf"))
        if video_mask is not None:
            wv = wv.masked_fill(~video_mask & video_mask.any(-1, keepdim=True), float("-inf"))
        return wt, wv

    def level_similarity(self, level, text, text_mask, video, video_mask):
        """WTI similarity [A, B] of one level, and what the Banzhaf loss needs."""
        wt, wv = self._weights(level, text, text_mask, video, video_mask)
        tn, vn = F.normalize(text, dim=-1), F.normalize(video, dim=-1)
        padding = self.config.entity_padding if level == "entity" else "ignore"
        sim = hbi_ops.wti_similarity(tn, vn, wt.softmax(-1), wv.softmax(-1), text_mask, video_mask, padding=padding)
        return sim, (tn, vn, wt, wv)

    def teacher_logits(self, sim, text_mask, video_mask, wt, wv):
        """The targets' logits [B, T, V]: the Banzhaf index of each matched pair's map / temperature."""
        cfg = self.config
        if self.teacher is not None:  # its outputs are in units of 1000 * R
            return self.teacher(sim) / (NETWORK_LABEL_SCALE * cfg.teacher_temperature)
        r, lt, lv = sim.float(), wt.float().masked_fill(~text_mask, 0), wv.float().masked_fill(~video_mask, 0)
        if cfg.reference_weights:
            lt = lt.masked_fill(~text_mask, float("-inf")).softmax(-1).nan_to_num(0.0)
            lv = lv.masked_fill(~video_mask, float("-inf")).softmax(-1).nan_to_num(0.0)
        estimator = cfg.banzhaf_estimator
        # The reference definition's exact estimator enumerates 2^n coalitions: larger levels sample.
        if (
            cfg.banzhaf_definition == "reference"
            and estimator == "exact"
            and sim.shape[1] + sim.shape[2] > cfg.exact_max_players
        ):
            estimator = "paired"
        index = hbi_ops.banzhaf_interaction(
            r,
            text_mask,
            video_mask,
            lt.nan_to_num(0.0),
            lv.nan_to_num(0.0),
            definition=cfg.banzhaf_definition,
            estimator=estimator,
            num_samples=cfg.banzhaf_samples,
            seed=int(self.step),
        )
        return index / cfg.teacher_temperature

    def banzhaf_loss(self, level, text_mask, video_mask, tn, vn, wt, wv):
        batch, words, frames = tn.shape[0], tn.shape[1], vn.shape[1]
        text_mask = text_mask if text_mask is not None else torch.ones(batch, words, dtype=torch.bool, device=tn.device)
        video_mask = (
            video_mask if video_mask is not None else torch.ones(batch, frames, dtype=torch.bool, device=tn.device)
        )
        valid = text_mask[:, :, None] & video_mask[:, None, :]
        # The matched pairs' fine-grained maps, zero at padded cells (as the reference's entity level):
        # the estimators' 3x3 convolutions would otherwise carry padded tokens into real cells.
        sim = torch.einsum("btd,bvd->btv", tn, vn).masked_fill(~valid, 0.0)
        with torch.no_grad():
            teacher = self.teacher_logits(sim, text_mask, video_mask, wt, wv)
        student = self.students[LEVELS.index(level)](sim)
        return banzhaf_kl(
            teacher.to(student.dtype), student, valid, self.config.banzhaf_reduction, self.config.banzhaf_transpose
        )

    # ---------------------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, pixel_values, frame_mask, gather=None):
        """Training loss on a batch of matched pairs: {'loss', 'contrastive/<level>', ...}.
        gather: applied to each entity feature and mask before the loss (multi-GPU: an all-gather with
        gradient, so that every rank computes the loss of the global batch)."""
        features = self.encode(input_ids, attention_mask, pixel_values, frame_mask)
        if gather is not None:
            features = tuple(gather(f) for f in features)
        return self.loss_from_features(*features)

    def loss_from_features(self, text, text_mask, video, video_mask):
        """The loss given (possibly all-gathered) entity features of matched pairs."""
        cfg = self.config
        parts, sims = {}, {}
        total = 0.0
        scale = self.encoders.logit_scale.exp().clamp(max=100)
        for level, t, tm, v, vm in self.levels(text, text_mask, video, video_mask):
            sim, extras = self.level_similarity(level, t, tm, v, vm)
            sims[level] = sim
            parts[f"contrastive/{level}"] = info_nce(sim, scale)
            total = total + parts[f"contrastive/{level}"]
            if cfg.use_banzhaf and cfg.skl:
                parts[f"banzhaf/{level}"] = self.banzhaf_loss(level, tm, vm, *extras)
                total = total + cfg.skl * parts[f"banzhaf/{level}"]
        if cfg.kl and len(sims) > 1:
            cross = sum(
                level_kl(sims[level], sims["entity"]) + level_kl(sims[level].t(), sims["entity"].t())
                for level in sims
                if level != "entity"
            )
            parts["cross_level_kl"] = cross
            total = total + cfg.kl * cross
        self.step += 1
        parts["loss"] = total
        return parts

    @torch.no_grad()
    def score(self, text, text_mask, video, video_mask, rates=None):
        """Inference score [A, B] = sum of rate_l * sim_l; levels whose rate is 0 are not computed."""
        rates = dict(zip(LEVELS, rates or self.config.rates))
        wanted = tuple(level for level in LEVELS if rates[level])
        if not self.config.use_hierarchy:
            wanted = ("entity",)
        total = 0.0
        for level, t, tm, v, vm in self.levels(text, text_mask, video, video_mask, wanted):
            total = total + rates[level] * self.level_similarity(level, t, tm, v, vm)[0]
        return total
