"""MSR-VTT (9k train, 1k-A test), MSVD, DiDeMo and ActivityNet Captions from their public annotation
files and a folder of videos (`<root>/videos/`)."""

import os

import torch

from hbi_model.data.annotations import AnnotationError, expect, field, read_csv, read_json, read_pickle
from hbi_model.data.video import load_video, rand_augment


class VideoTextDataset(torch.utils.data.Dataset):
    """Pairs (video file, caption, video id) -> items like the synthetic set's."""

    def __init__(self, pairs, max_frames, size=224, augment=None):
        self.pairs, self.max_frames, self.size, self.augment = pairs, max_frames, size, augment

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        path, caption, video_id = self.pairs[index]
        frames, mask = load_video(path, self.max_frames, self.size, augment=self.augment)
        return {"frames": frames, "frame_mask": mask, "caption": caption, "video_id": video_id}


def _video_path(root, video_id, extensions=(".mp4", ".avi", ".mkv", ".webm")):
    for ext in extensions:
        path = os.path.join(root, "videos", video_id + ext)
        if os.path.exists(path):
            return path
    return os.path.join(root, "videos", video_id + extensions[0])  # reported as unreadable when loaded


def msrvtt_pairs(root):
    """Train: every caption of every video of MSRVTT_train.9k.csv; test: the 1k-A pairs."""
    path = os.path.join(root, "MSRVTT_data.json")
    sentences = expect(field(read_json(path), "sentences", path, "the top level"), list, path, "'sentences'")
    captions = [
        (field(s, "video_id", path, f"sentences[{i}]"), field(s, "caption", path, f"sentences[{i}]"))
        for i, s in enumerate(sentences)
    ]
    train_ids = {row["video_id"] for row in read_csv(os.path.join(root, "MSRVTT_train.9k.csv"), ["video_id"])}
    train = [(_video_path(root, video), caption, video) for video, caption in captions if video in train_ids]
    rows = read_csv(os.path.join(root, "MSRVTT_JSFUSION_test.csv"), ["video_id", "sentence"])
    test = [(_video_path(root, row["video_id"]), row["sentence"], row["video_id"]) for row in rows]
    return train, test


def msvd_pairs(root):
    """raw-captions.pkl (video id -> list of token lists), train_list.txt, test_list.txt; the test set uses
    each video's first caption (one text per video, so the diagonal is the positive)."""
    path = os.path.join(root, "raw-captions.pkl")
    captions = expect(read_pickle(path), dict, path, "the top level")

    def split(name):
        with open(os.path.join(root, name)) as handle:
            videos = [line.strip() for line in handle if line.strip()]
        for video in videos:
            if not captions.get(video):
                raise AnnotationError(f"{path} has no caption of video {video!r} (listed in {name})")
        return videos

    train = [(_video_path(root, v), " ".join(c), v) for v in split("train_list.txt") for c in captions[v]]
    test = [(_video_path(root, v), " ".join(captions[v][0]), v) for v in split("test_list.txt")]
    return train, test


def didemo_pairs(root):
    """train_data.json / test_data.json (lists of {video, description}): one paragraph per video."""

    def merged(name):
        path = os.path.join(root, name)
        paragraphs = {}
        for i, entry in enumerate(expect(read_json(path), list, path, "the top level")):
            video = field(entry, "video", path, f"entry {i}")
            paragraphs.setdefault(video, []).append(field(entry, "description", path, f"entry {i}"))
        return [(_video_path(root, v), " ".join(d), v) for v, d in paragraphs.items()]

    return merged("train_data.json"), merged("test_data.json")


def activitynet_pairs(root):
    """train.json and val_1.json ({video id: {sentences: [...]}}): paragraph-to-video, val1 as test."""

    def paragraphs(name):
        path = os.path.join(root, name)
        videos = expect(read_json(path), dict, path, "the top level")
        return [
            (_video_path(root, video), " ".join(field(entry, "sentences", path, f"video {video!r}")), video)
            for video, entry in videos.items()
        ]

    return paragraphs("train.json"), paragraphs("val_1.json")


FILES = {
    "msrvtt": ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"),
    "msvd": ("raw-captions.pkl", "train_list.txt", "test_list.txt"),
    "didemo": ("train_data.json", "test_data.json"),
    "activitynet": ("train.json", "val_1.json"),
}
LOADERS = {"msrvtt": msrvtt_pairs, "msvd": msvd_pairs, "didemo": didemo_pairs, "activitynet": activitynet_pairs}


def datasets(name, settings):
    root = settings.get("data_root")
    if not root:
        raise ValueError(f"--data {name} needs --data-root (the folder of its annotation files and videos/)")
    train, test = LOADERS[name](root)
    for split, pairs in (("training", train), ("test", test)):
        if not pairs:
            raise AnnotationError(f"--data {name}: no {split} pair in {root} (from {', '.join(FILES[name])})")
    size = settings.get("image_size", 224)
    augment = rand_augment() if settings.get("rand_augment", True) else None  # training only, as the reference
    return (
        VideoTextDataset(train, settings["max_frames"], size, augment),
        VideoTextDataset(test, settings["max_frames"], size),
    )
