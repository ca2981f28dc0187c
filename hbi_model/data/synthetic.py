"""A synthetic video-text data set generated on the fly: short clips of coloured shapes moving across
the frame one after another, with captions that name them in order ("a red circle then a blue square"),
so that words must be matched to particular frames. Deterministic per index and seed; no download."""

import torch

COLOURS = {
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.9, 0.1),
    "blue": (0.1, 0.2, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "purple": (0.6, 0.1, 0.8),
    "cyan": (0.1, 0.9, 0.9),
}
SHAPES = ("circle", "square", "triangle", "cross")
DIRECTIONS = ("left", "right", "up", "down")
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]


def _shape_mask(shape, size, cx, cy, radius):
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (dx.abs() <= radius) & (dy.abs() <= radius)
    if shape == "triangle":
        return (dy <= radius) & (dy >= -radius) & (dx.abs() <= (dy + radius) / 2)
    return ((dx.abs() <= radius / 3) & (dy.abs() <= radius)) | ((dy.abs() <= radius / 3) & (dx.abs() <= radius))


class SyntheticVideoText(torch.utils.data.Dataset):
    """Item i: {'frames' [max_frames, 3, size, size] (CLIP-normalised, zero-padded), 'frame_mask',
    'caption', 'video_id', 'events' [(colour, shape, direction)]}."""

    def __init__(
        self, num_videos=2000, max_frames=6, size=32, min_events=2, max_events=3, seed=0, with_direction=False
    ):
        self.num_videos, self.max_frames, self.size = num_videos, max_frames, size
        self.min_events, self.max_events, self.seed = min_events, max_events, seed
        self.with_direction = with_direction

    def __len__(self):
        return self.num_videos

    @staticmethod
    def vocabulary():
        return ["a", "then", "moving", *COLOURS, *SHAPES, *DIRECTIONS]

    def events(self, index):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        count = int(torch.randint(self.min_events, self.max_events + 1, (), generator=g))
        colours, shapes = list(COLOURS), list(SHAPES)
        return [
            (
                colours[int(torch.randint(len(colours), (), generator=g))],
                shapes[int(torch.randint(len(shapes), (), generator=g))],
                DIRECTIONS[int(torch.randint(len(DIRECTIONS), (), generator=g))],
            )
            for _ in range(count)
        ], g

    def caption(self, events):
        parts = [f"a {c} {s}" + (f" moving {d}" if self.with_direction else "") for c, s, d in events]
        return " then ".join(parts)

    def __getitem__(self, index):
        events, g = self.events(index)
        num_frames = int(torch.randint(max(len(events), self.max_frames - 2), self.max_frames + 1, (), generator=g))
        frames = torch.zeros(self.max_frames, 3, self.size, self.size)
        background = 0.15 * torch.rand(3, 1, 1, generator=g)
        radius = self.size / 6
        for f in range(num_frames):
            event = min(f * len(events) // num_frames, len(events) - 1)  # events in order over the clip
            colour, shape, direction = events[event]
            first = next(k for k in range(num_frames) if min(k * len(events) // num_frames, len(events) - 1) == event)
            span = sum(1 for k in range(num_frames) if min(k * len(events) // num_frames, len(events) - 1) == event)
            progress = (f - first + 0.5) / span
            travel = (progress - 0.5) * self.size * 0.5
            cx = cy = self.size / 2
            cx += {"left": -travel, "right": travel}.get(direction, 0.0)
            cy += {"up": -travel, "down": travel}.get(direction, 0.0)
            mask = _shape_mask(shape, self.size, cx, cy, radius)
            image = background.expand(3, self.size, self.size).clone()
            image[:, mask] = torch.tensor(COLOURS[colour])[:, None]
            image += 0.03 * torch.randn(image.shape, generator=g)
            frames[f] = (image.clamp(0, 1) - CLIP_MEAN) / CLIP_STD
        frame_mask = torch.arange(self.max_frames) < num_frames
        return {
            "frames": frames,
            "frame_mask": frame_mask,
            "caption": self.caption(events),
            "video_id": f"synthetic{self.seed}_{index}",
            "events": events,
        }
