"""Building the model, tokeniser, data sets and training order from the command line's settings."""

import dataclasses
import math

from hbi_model.data import SyntheticVideoText, WordTokenizer
from hbi_model.data.events import GroupSampler, SyntheticEvents
from hbi_model.encoders import CLIPEncoders, tiny_clip_config
from hbi_model.retrieval import HBIConfig, HBIRetrieval

EVENTS_RATIOS = {"v_rate0": 0.5, "v_rate1": 0.5}  # six frames -> 3 -> 2 clusters (0.25 would give 2 -> 1)


def hbi_config(settings):
    fields = {f.name for f in dataclasses.fields(HBIConfig)}
    values = {k: v for k, v in settings.items() if k in fields and v is not None}
    if "rates" in values:
        values["rates"] = tuple(values["rates"])
    return HBIConfig(**values)


def tokenizer(settings):
    """CLIP's tokeniser (`clip`: a local folder or hub name) or a word tokeniser of the synthetic vocabularies."""
    if settings.get("clip"):
        from hbi_model.data.tokenizer import CLIPTextTokenizer

        return CLIPTextTokenizer(settings["clip"])
    from hbi_model.data.qa import SyntheticQA

    return WordTokenizer(SyntheticEvents.vocabulary() + SyntheticVideoText.vocabulary() + SyntheticQA.words())


def tokenizer_and_encoders(settings):
    """Real CLIP or, by default, a tiny random CLIP over the synthetic vocabulary, its logit scale starting
    at `logit_scale_init` (the reference starts from CLIP's trained 100; CLIP's own initial value is 1/0.07)."""
    words = tokenizer(settings)
    if settings.get("clip"):
        return words, CLIPEncoders.from_pretrained(settings["clip"])
    config = tiny_clip_config(
        vocab_size=len(words),
        width=settings.get("tiny_width", 64),
        projection_dim=settings.get("tiny_width", 64),
        image_size=32,
        patch_size=8,
        max_words=settings["max_words"],
        layers=settings.get("tiny_layers", 2),
        heads=4,
    )
    scale = settings.get("logit_scale_init")
    scale = 100.0 if scale is None else scale
    if not scale > 0:
        raise ValueError(f"logit_scale_init must be positive, got {scale}")
    config.logit_scale_init_value = math.log(scale)
    return words, CLIPEncoders.from_config(config)


def model(settings):
    """The retrieval model; on the events task the video cluster ratios default to EVENTS_RATIOS."""
    tokenizer, encoders = tokenizer_and_encoders(settings)
    defaults = EVENTS_RATIOS if settings.get("data", "synthetic") == "synthetic" else {}
    return tokenizer, HBIRetrieval(encoders, hbi_config({**defaults, **settings}))


def qa_model(settings, num_answers):
    from hbi_model.qa import HBIQA, QA_RATIOS

    tokenizer, encoders = tokenizer_and_encoders(settings)
    config = hbi_config({**QA_RATIOS, **settings})
    return tokenizer, HBIQA(encoders, num_answers, config)


def datasets(settings):
    """(train, test) data sets."""
    name = settings.get("data", "synthetic")
    if name == "synthetic":
        return (
            SyntheticEvents(settings["num_train"], max_frames=settings["max_frames"], seed=settings["seed"] * 2 + 1),
            SyntheticEvents(settings["num_test"], max_frames=settings["max_frames"], seed=settings["seed"] * 2 + 2),
        )
    if name == "shapes":
        common = dict(max_frames=settings["max_frames"], with_direction=settings.get("with_direction", False))
        return (
            SyntheticVideoText(settings["num_train"], seed=settings["seed"] * 2 + 1, **common),
            SyntheticVideoText(settings["num_test"], seed=settings["seed"] * 2 + 2, **common),
        )
    from hbi_model.data import real

    return real.datasets(name, settings)


def train_sampler(train_set, settings, rank=0, world=1):
    """The training order a data set needs, or None for the trainer's own (a shuffle of single pairs):
    the events task keeps its groups of four together, so that every batch holds each clip's hard
    negatives (the batch size per process must then be a multiple of four)."""
    if not isinstance(train_set, SyntheticEvents):
        return None
    per_rank = settings["batch_size"] // world
    if per_rank % 4:
        raise ValueError(
            f"batch_size per process must be a multiple of 4 for the events task (groups of four), got {per_rank}"
        )
    return GroupSampler(len(train_set), settings["seed"], rank, world, shuffle=not settings.get("no_shuffle"))
