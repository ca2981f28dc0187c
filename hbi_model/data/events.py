"""The default synthetic task: clips of two events, three frames each, in which words must be bound to the
right frames and frames grouped into events. Each event is a shape of one colour moving across its three
frames (its direction shows only over several frames: the start is random), and every frame also holds a
small static distractor of a random colour. Captions name colour, shape and motion of each event in order:
"a red circle moves left then a blue square moves up".

Clips come in groups of four: an anchor and three hard negatives with the same objects, each differing
from the anchor in exactly one factor (FACTORS): one event's motion, the order of the two events, or the
binding of the colours to the shapes. Generated on the fly, deterministic per index and seed."""

import torch

from hbi_model.data.synthetic import CLIP_MEAN, CLIP_STD, COLOURS, DIRECTIONS, SHAPES, _shape_mask

FACTORS = ("anchor", "motion", "order", "binding")  # member i of a group differs from member 0 in FACTORS[i]
GROUP = len(FACTORS)
STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy) in image axes


def caption(events):
    return " then ".join(f"a {colour} {shape} moves {direction}" for colour, shape, direction in events)


def group_events(g):
    """The four clips' events [(colour, shape, direction)] x 2 of one group, drawn with generator g."""
    colours = torch.randperm(len(COLOURS), generator=g)[:2].tolist()
    shapes = torch.randperm(len(SHAPES), generator=g)[:2].tolist()
    (c1, c2), (s1, s2) = [list(COLOURS)[i] for i in colours], [SHAPES[i] for i in shapes]
    d1, d2 = (DIRECTIONS[int(torch.randint(len(DIRECTIONS), (), generator=g))] for _ in range(2))
    anchor = [(c1, s1, d1), (c2, s2, d2)]
    moved = int(torch.randint(2, (), generator=g))  # which event's motion the "motion" negative changes
    others = [d for d in DIRECTIONS if d != anchor[moved][2]]
    motion = list(anchor)
    motion[moved] = (*anchor[moved][:2], others[int(torch.randint(len(others), (), generator=g))])
    order = [anchor[1], anchor[0]]
    binding = [(c2, s1, d1), (c1, s2, d2)]  # colours swapped between the shapes; shapes keep their motion
    return [anchor, motion, order, binding]


class SyntheticEvents(torch.utils.data.Dataset):
    """Item i (member i % 4 of group i // 4): {'frames' [max_frames, 3, size, size] (CLIP-normalised; frames
    past the six real ones are zero with mask 0), 'frame_mask', 'caption', 'video_id', 'events'
    [(colour, shape, direction)] x 2, 'group', 'factor' (FACTORS), 'positions' [(x, y)] of the moving
    shape's centre in each real frame, 'distractor' (x, y, half side) or None}."""

    frames_per_event = 3
    num_events = 2

    def __init__(self, num_videos=2000, max_frames=6, size=32, seed=0, distractor=True, step=0.18):
        """step: how far the shape moves a frame, as a fraction of the frame's size."""
        if num_videos <= 0 or num_videos % GROUP:
            raise ValueError(f"num_videos must be a positive multiple of {GROUP} (groups of four), got {num_videos}")
        real_frames = self.frames_per_event * self.num_events
        if max_frames < real_frames:
            raise ValueError(
                f"max_frames must be at least {real_frames} (two events of three frames), got {max_frames}"
            )
        if size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {size}")
        if not 0 < step <= 0.3:  # two steps and the shape (2/7 of the frame) must fit in the frame
            raise ValueError(f"step must be in (0, 0.3] of the frame's size, got {step}")
        self.num_videos, self.max_frames, self.size, self.seed = num_videos, max_frames, size, seed
        self.distractor, self.step = distractor, step

    def __len__(self):
        return self.num_videos

    @staticmethod
    def vocabulary():
        return ["a", "moves", "then", *COLOURS, *SHAPES, *DIRECTIONS]

    def score_metrics(self, sim):
        """What an evaluation of this set adds to retrieval's: group_accuracy of its [texts, videos] score
        (the test loader keeps the set's order)."""
        return group_accuracy(sim)

    def _generator(self, *key):
        value = self.seed
        for part in key:
            value = value * 1_000_003 + part
        return torch.Generator().manual_seed(value % (2**63))

    def events(self, index):
        group, member = divmod(index, GROUP)
        return group_events(self._generator(group, 0))[member]

    def __getitem__(self, index):
        if not 0 <= index < self.num_videos:
            raise IndexError(f"index {index} out of range for {self.num_videos} videos")
        group, member = divmod(index, GROUP)
        events = self.events(index)
        g = self._generator(group, member + 1)  # each clip's own nuisance: positions, background, distractor
        size, radius = self.size, self.size / 7
        step = self.size * self.step
        background = 0.15 * torch.rand(3, 1, 1, generator=g)
        spot = self.size / 32  # the distractor: a small square (3 x 3 of 32) at one place in every frame
        spot_x, spot_y = (float(v) for v in spot + torch.rand(2, generator=g) * (size - 2 * spot))
        frames = torch.zeros(self.max_frames, 3, size, size)
        positions = []
        palette = list(COLOURS.values())
        for e, (colour, shape, direction) in enumerate(events):
            dx, dy = STEPS[direction]
            travel = 2 * step  # from the first to the third frame
            low, high = radius, size - 1 - radius  # the whole path stays inside the frame
            x0 = low + float(torch.rand((), generator=g)) * (high - low - travel * abs(dx))
            y0 = low + float(torch.rand((), generator=g)) * (high - low - travel * abs(dy))
            x0 += travel * (dx < 0)
            y0 += travel * (dy < 0)
            for k in range(self.frames_per_event):
                cx, cy = x0 + k * step * dx, y0 + k * step * dy
                image = background.expand(3, size, size).clone()
                if self.distractor:
                    spot_mask = _shape_mask("square", size, spot_x, spot_y, spot)
                    image[:, spot_mask] = torch.tensor(palette[int(torch.randint(len(palette), (), generator=g))])[
                        :, None
                    ]
                image[:, _shape_mask(shape, size, cx, cy, radius)] = torch.tensor(COLOURS[colour])[:, None]
                image += 0.03 * torch.randn(image.shape, generator=g)
                frames[e * self.frames_per_event + k] = (image.clamp(0, 1) - CLIP_MEAN) / CLIP_STD
                positions.append((cx, cy))
        frame_mask = torch.arange(self.max_frames) < self.frames_per_event * self.num_events
        return {
            "frames": frames,
            "frame_mask": frame_mask,
            "caption": caption(events),
            "video_id": f"events{self.seed}_{index}",
            "events": events,
            "group": group,
            "factor": FACTORS[member],
            "positions": positions,
            "distractor": (spot_x, spot_y, spot) if self.distractor else None,
        }


class GroupSampler(torch.utils.data.Sampler):
    """Training order that keeps each group of four together: a permutation of the groups drawn from
    (seed, epoch), each group's four members in a row; rank r of `world` takes every world-th group. With
    a batch size that is a multiple of four (and drop_last), every batch is whole groups, so each clip
    meets its three hard negatives in its own batch. Same interface as train.EpochSampler (`epoch`)."""

    def __init__(self, size, seed, rank=0, world=1, shuffle=True):
        if size % GROUP:
            raise ValueError(f"GroupSampler needs a data set size that is a multiple of {GROUP}, got {size}")
        self.groups, self.seed, self.rank, self.world, self.shuffle = size // GROUP, seed, rank, world, shuffle
        self.epoch = 0

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.groups, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.groups)
        usable = self.groups - self.groups % self.world
        mine = order[:usable][self.rank :: self.world]
        return iter((mine[:, None] * GROUP + torch.arange(GROUP)).flatten().tolist())

    def __len__(self):
        return (self.groups // self.world) * GROUP


def group_accuracy(sim):
    """Within-group metrics of a [texts, videos] score over an ordered SyntheticEvents test set (text i
    and video i a pair, groups of four in a row), in percent. 'group': each caption picks its own clip
    among its group's four (chance 25 %); 'motion' / 'order' / 'binding': the anchor's caption and that
    negative's caption each prefer their own clip of the two (chance 50 %). A tie counts as wrong."""
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] % GROUP:
        raise ValueError(f"sim must be [N, N] with N a multiple of {GROUP}, got {tuple(sim.shape)}")
    if not torch.isfinite(sim).all():
        raise ValueError("sim has non-finite values: the model's scores are not usable")
    groups = sim.shape[0] // GROUP
    blocks = sim.double().view(groups, GROUP, groups, GROUP).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [G, 4, 4]
    own = blocks.diagonal(dim1=1, dim2=2)  # [G, 4]
    others = blocks.masked_fill(torch.eye(GROUP, dtype=torch.bool), float("-inf")).amax(-1)
    out = {"group": 100 * (own > others).double().mean().item()}
    for member, factor in enumerate(FACTORS[1:], start=1):
        anchor_right = blocks[:, 0, 0] > blocks[:, 0, member]
        negative_right = blocks[:, member, member] > blocks[:, member, 0]
        out[factor] = 100 * torch.cat([anchor_right, negative_right]).double().mean().item()
    return out
