"""Decoding with PyAV at 1 frame per second, uniform picking, padding with a mask, CLIP preprocessing.
An unreadable video is reported and comes back empty (mask all 0): a long run never crashes on one."""

import logging

import numpy as np
import torch
import torch.nn.functional as F

from hbi_model.data.synthetic import CLIP_MEAN, CLIP_STD

log = logging.getLogger("hbi_model.data")


def clip_preprocess(frames, size=224):
    """uint8 [N, H, W, 3] -> float [N, 3, size, size]: shorter side to `size` (bicubic), centre crop,
    CLIP normalisation."""
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(
        x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bicubic", align_corners=False
    ).clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top : top + size, left : left + size]
    return (x - CLIP_MEAN) / CLIP_STD


def uniform_pick(count, wanted):
    if count <= wanted:
        return list(range(count))
    return np.linspace(0, count - 1, wanted).round().astype(int).tolist()


def decode_frames(path, fps=1.0):
    """uint8 [N, H, W, 3]: the first frame at or after each 1/fps seconds."""
    import av

    frames, next_time = [], 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.time is None or frame.time + 1e-6 >= next_time:
                frames.append(frame.to_ndarray(format="rgb24"))
                next_time += 1.0 / fps
    if not frames:
        raise ValueError("no decodable frame")
    return np.stack(frames)


def rand_augment():
    """The reference's training augmentation (RandAugment, torchvision's), one draw per video: the same
    operations on all of a video's frames."""
    from torchvision.transforms import v2

    return v2.RandAugment()


def load_video(path, max_frames, size=224, fps=1.0, augment=None):
    """(frames [max_frames, 3, size, size], mask [max_frames]); all zeros with mask 0 if unreadable.
    augment: applied to the picked uint8 frames [N, 3, H, W] together, before CLIP preprocessing."""
    out = torch.zeros(max_frames, 3, size, size)
    mask = torch.zeros(max_frames, dtype=torch.bool)
    try:
        frames = decode_frames(path, fps)
    except Exception as error:  # corrupt, missing or unsupported: report, skip, go on
        log.warning("skipping unreadable video %s: %s", path, error)
        return out, mask
    picked = frames[uniform_pick(len(frames), max_frames)]
    if augment is not None:
        picked = augment(torch.from_numpy(picked).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    out[: len(picked)] = clip_preprocess(picked, size)
    mask[: len(picked)] = True
    return out, mask
