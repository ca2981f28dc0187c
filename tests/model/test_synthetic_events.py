"""The events task: what is drawn is what the caption says (colours, order, motion), a group's negatives
differ from its anchor in exactly one factor, the within-group metrics, and the group-keeping order."""

import random

import pytest
import torch

from hbi_model import build
from hbi_model.data import WordTokenizer, collate
from hbi_model.data.events import FACTORS, GroupSampler, SyntheticEvents, group_accuracy
from hbi_model.data.synthetic import CLIP_MEAN, CLIP_STD, COLOURS, DIRECTIONS, SHAPES

SEED = random.randrange(10_000)  # fresh clips on every run; the seed is in the test's id on failure


def parse(caption):
    """'a red circle moves left then a blue square moves up' -> [(red, circle, left), (blue, square, up)]."""
    events = []
    for part in caption.split(" then "):
        article, colour, shape, verb, direction = part.split()
        assert (article, verb) == ("a", "moves") and colour in COLOURS and shape in SHAPES and direction in DIRECTIONS
        events.append((colour, shape, direction))
    return events


def colour_centroid(frame, colour, distractor):
    """Centre (x, y) of the pixels of `colour` in an un-normalised frame, the distractor's square left out."""
    image = frame * CLIP_STD + CLIP_MEAN
    close = ((image - torch.tensor(COLOURS[colour])[:, None, None]).abs() < 0.15).all(0)
    x, y, half = distractor
    ys, xs = torch.meshgrid(torch.arange(frame.shape[-2]), torch.arange(frame.shape[-1]), indexing="ij")
    close &= ~(((xs - x).abs() <= half + 1) & ((ys - y).abs() <= half + 1))
    assert close.sum() >= 10, f"no {colour} shape drawn"
    return xs[close].float().mean().item(), ys[close].float().mean().item()


@pytest.mark.parametrize("seed", [SEED])
def test_frames_show_what_the_caption_says(seed):
    data = SyntheticEvents(16, seed=seed)
    for index in range(len(data)):
        item = data[index]
        events = parse(item["caption"])
        assert events == item["events"] and item["frame_mask"].sum() == 6
        for e, (colour, _shape, direction) in enumerate(events):
            frames = item["frames"][3 * e : 3 * e + 3]
            other = events[1 - e][0]
            start, end = (colour_centroid(f, colour, item["distractor"]) for f in (frames[0], frames[2]))
            dx, dy = end[0] - start[0], end[1] - start[1]
            expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
            moved = dx if expected[0] else dy
            still = dy if expected[0] else dx
            assert moved * sum(expected) > 8 and abs(still) < 3, (item["caption"], e, dx, dy)
            # the event's frames hold its own colour's shape, not the other event's (order)
            image = frames[1] * CLIP_STD + CLIP_MEAN
            x, y, half = item["distractor"]
            ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
            away = ~(((xs - x).abs() <= half + 1) & ((ys - y).abs() <= half + 1))
            other_pixels = ((image - torch.tensor(COLOURS[other])[:, None, None]).abs() < 0.15).all(0) & away
            assert other_pixels.sum() == 0


@pytest.mark.parametrize("seed", [SEED])
def test_each_negative_differs_from_its_anchor_in_exactly_one_factor(seed):
    data = SyntheticEvents(4 * 50, seed=seed)
    for group in range(50):
        anchor, *negatives = (parse(data[4 * group + m]["caption"]) for m in range(4))
        assert [data[4 * group + m]["factor"] for m in range(4)] == list(FACTORS)
        (c1, s1, d1), (c2, s2, d2) = anchor
        assert c1 != c2 and s1 != s2  # otherwise an order or binding swap could give the same clip
        motion, order, binding = negatives
        # motion: same objects in the same order, exactly one event's direction changed
        assert [(c, s) for c, s, _ in motion] == [(c1, s1), (c2, s2)]
        assert sum(m[2] != a[2] for m, a in zip(motion, anchor)) == 1
        # order: the same two events, the other way round
        assert order == [anchor[1], anchor[0]]
        # binding: shapes and motions in place, the two colours exchanged
        assert binding == [(c2, s1, d1), (c1, s2, d2)]
        assert len({str(e) for e in (anchor, motion, order, binding)}) == 4


def test_the_set_is_deterministic_and_checks_its_arguments():
    a, b = SyntheticEvents(8, seed=5), SyntheticEvents(8, seed=5)
    torch.testing.assert_close(a[6]["frames"], b[6]["frames"])
    assert a[6]["caption"] == b[6]["caption"]
    other_seed = SyntheticEvents(8, seed=6)
    assert [a[i]["caption"] for i in range(8)] != [other_seed[i]["caption"] for i in range(8)]
    padded = SyntheticEvents(4, max_frames=8)[0]
    assert padded["frames"].shape[0] == 8 and padded["frame_mask"].tolist() == [True] * 6 + [False] * 2
    assert (padded["frames"][6:] == 0).all()
    with pytest.raises(ValueError, match="num_videos"):
        SyntheticEvents(6)
    with pytest.raises(ValueError, match="max_frames"):
        SyntheticEvents(8, max_frames=4)
    with pytest.raises(ValueError, match="step"):
        SyntheticEvents(8, step=0.5)
    with pytest.raises(IndexError):
        a[8]
    tokenizer = WordTokenizer(SyntheticEvents.vocabulary())
    batch = collate([a[i] for i in range(4)], tokenizer, 16)
    assert 3 not in batch["input_ids"] and (batch["attention_mask"].sum(1) == 13).all()  # 11 words + start, end


def test_group_accuracy_by_hand():
    # Two groups. Group 0: every caption prefers its own clip except caption 1 (motion), which prefers
    # the anchor clip; group 1: caption 6 (order) ties with the anchor clip (a tie is wrong).
    sim = torch.zeros(8, 8)
    for i in range(8):
        sim[i, i] = 1.0
    sim[1, 0] = 2.0
    sim[6, 4] = 1.0
    sim[4, 7] = 0.5  # the anchor of group 1 likes the binding clip, but less than its own
    out = group_accuracy(sim)
    assert out["group"] == pytest.approx(100 * 6 / 8)
    # motion: group 0 anchor right, caption 1 wrong; group 1 both right -> 3 of 4
    assert out["motion"] == pytest.approx(75.0)
    assert out["order"] == pytest.approx(75.0)  # caption 6 ties with its anchor clip
    assert out["binding"] == pytest.approx(100.0)
    assert group_accuracy(torch.ones(8, 8))["group"] == 0.0  # a constant model is never right
    assert SyntheticEvents(8).score_metrics(sim) == out
    with pytest.raises(ValueError, match="multiple of 4"):
        group_accuracy(torch.zeros(6, 6))
    with pytest.raises(ValueError, match="non-finite"):
        group_accuracy(torch.full((4, 4), float("nan")))


def test_group_sampler_keeps_groups_in_batches():
    sampler = GroupSampler(40, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(40))
    for start in range(0, 40, 4):
        members = first[start : start + 4]
        assert len({i // 4 for i in members}) == 1 and [i % 4 for i in members] == [0, 1, 2, 3]
    sampler.epoch = 1
    assert list(sampler) != first
    ranks = [list(GroupSampler(40, seed=3, rank=r, world=2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(GroupSampler(40, 3, 0, 2)) == 20
    with pytest.raises(ValueError, match="multiple of 4"):
        GroupSampler(10, seed=0)


def test_build_gives_the_events_task_its_order_and_ratios():
    settings = {
        "data": "synthetic",
        "num_train": 16,
        "num_test": 8,
        "max_frames": 6,
        "max_words": 16,
        "seed": 0,
        "batch_size": 8,
        "tiny_width": 16,
        "tiny_layers": 1,
        "temporal_layers": 1,
        "temporal_heads": 2,
        "attention_heads": 2,
    }
    train_set, test_set = build.datasets(settings)
    assert isinstance(train_set, SyntheticEvents) and len(test_set) == 8
    assert isinstance(build.train_sampler(train_set, settings), GroupSampler)
    with pytest.raises(ValueError, match="multiple of 4"):
        build.train_sampler(train_set, dict(settings, batch_size=6))
    _, model = build.model(settings)
    assert (model.config.v_rate0, model.config.v_rate1) == (0.5, 0.5)  # 6 frames -> 3 -> 2
    shapes = dict(settings, data="shapes")
    assert build.train_sampler(build.datasets(shapes)[0], shapes) is None
    assert build.model(shapes)[1].config.v_rate0 == 0.25
