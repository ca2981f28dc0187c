"""Building the model, tokeniser and data sets from the command line's settings."""
import dataclasses

from hbi_model.data import SyntheticVideoText, WordTokenizer
from hbi_model.encoders import CLIPEncoders, tiny_clip_config
from hbi_model.retrieval import HBIConfig, HBIRetrieval


def hbi_config(settings):
    fields = {f.name for f in dataclasses.fields(HBIConfig)}
    values = {k: v for k, v in settings.items() if k in fields and v is not None}
    if "rates" in values:
        values["rates"] = tuple(values["rates"])
    return HBIConfig(**values)


def tokenizer_and_encoders(settings):
    """Real CLIP (`clip`: a local folder or hub name) or, by default, a tiny random CLIP over the
    synthetic vocabulary."""
    if settings.get("clip"):
        from hbi_model.data.tokenizer import CLIPTextTokenizer

        return CLIPTextTokenizer(settings["clip"]), CLIPEncoders.from_pretrained(settings["clip"])
    from hbi_model.data.qa import SyntheticQA

    tokenizer = WordTokenizer(SyntheticVideoText.vocabulary() + SyntheticQA.words())
    config = tiny_clip_config(vocab_size=len(tokenizer), width=settings.get("tiny_width", 64),
                              projection_dim=settings.get("tiny_width", 64), image_size=32, patch_size=8,
                              max_words=settings["max_words"], layers=settings.get("tiny_layers", 2), heads=4)
    return tokenizer, CLIPEncoders.from_config(config)


def model(settings):
    tokenizer, encoders = tokenizer_and_encoders(settings)
    return tokenizer, HBIRetrieval(encoders, hbi_config(settings))


def qa_model(settings, num_answers):
    from hbi_model.qa import HBIQA, QA_RATIOS

    tokenizer, encoders = tokenizer_and_encoders(settings)
    config = hbi_config({**QA_RATIOS, **settings})
    return tokenizer, HBIQA(encoders, num_answers, config)


def datasets(settings):
    """(train, test) data sets."""
    name = settings.get("data", "synthetic")
    if name == "synthetic":
        common = dict(max_frames=settings["max_frames"], with_direction=settings.get("with_direction", False))
        return (SyntheticVideoText(settings["num_train"], seed=settings["seed"] * 2 + 1, **common),
                SyntheticVideoText(settings["num_test"], seed=settings["seed"] * 2 + 2, **common))
    from hbi_model.data import real

    return real.datasets(name, settings)
