"""CLIP text and frame encoders through `transformers` (SPEC section 2, "Encoders")."""

import torch
from torch import nn


class CLIPEncoders(nn.Module):
    """Per-token text features [A, T, D] and per-frame features [B, V, D] from one CLIPModel.

    Words: the projected hidden state at every text position (start, words, end token); frames: the
    projected CLS embedding of each frame. Padded frames are encoded too (their features are masked
    downstream), which keeps shapes static.
    """

    def __init__(self, clip):
        super().__init__()
        self.clip = clip
        self.width = clip.config.projection_dim

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs):
        """A local folder or a hub name (e.g. openai/clip-vit-base-patch32)."""
        from transformers import CLIPModel

        return cls(CLIPModel.from_pretrained(name_or_path, **kwargs))

    @classmethod
    def from_config(cls, config):
        from transformers import CLIPModel

        return cls(CLIPModel(config))

    @property
    def image_size(self):
        """The frame size the vision tower takes (frames of another size are an error in transformers)."""
        return self.clip.config.vision_config.image_size

    @property
    def logit_scale(self):
        return self.clip.logit_scale

    def encode_text(self, input_ids, attention_mask):
        hidden = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.clip.text_projection(hidden)

    def encode_frames(self, pixel_values):
        """pixel_values [B, V, 3, H, W] -> [B, V, D]."""
        batch, frames = pixel_values.shape[:2]
        pooled = self.clip.vision_model(pixel_values=pixel_values.flatten(0, 1)).pooler_output
        return self.clip.visual_projection(pooled).view(batch, frames, -1)


def with_image_size(settings, encoders):
    """settings with `image_size` (the size frames are decoded at) set to the encoder's; a different
    size set explicitly is an error rather than a crash in the first batch."""
    wanted = settings.get("image_size")
    if wanted is not None and wanted != encoders.image_size:
        raise ValueError(
            f"image_size {wanted} does not match the CLIP encoder's {encoders.image_size} (its "
            f"vision_config.image_size); leave image_size unset to follow the encoder"
        )
    return {**settings, "image_size": encoders.image_size}


def tiny_clip_config(
    vocab_size=64, width=32, projection_dim=32, image_size=32, patch_size=8, max_words=32, layers=2, heads=2
):
    """A small randomly initialised CLIP, for tests and the download-free default run."""
    from transformers import CLIPConfig

    text = dict(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_words,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


class TemporalTransformer(nn.Module):
    """The "seqTransf" temporal module: learned frame positions, pre-LN transformer layers with a key
    padding mask, then the CLIP frame features added back."""

    def __init__(self, width=512, layers=4, heads=8, max_frames=12):
        super().__init__()
        self.position = nn.Embedding(max_frames, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, frames, frame_mask):
        positions = torch.arange(frames.shape[1], device=frames.device)
        x = frames + self.position(positions)[None]
        # A video with no real frame would make every key masked (NaN rows): let it attend to all.
        key_padding = ~frame_mask & frame_mask.any(1, keepdim=True)
        return self.encoder(x, src_key_padding_mask=key_padding) + frames
