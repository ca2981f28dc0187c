"""MSR-VTT (9k train, 1k-A test), MSVD, DiDeMo and ActivityNet Captions from their public annotation
files and a folder of videos (`<root>/videos/`)."""
import csv
import json
import os
import pickle

import torch

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
    with open(os.path.join(root, "MSRVTT_data.json")) as handle:
        sentences = json.load(handle)["sentences"]
    with open(os.path.join(root, "MSRVTT_train.9k.csv")) as handle:
        train_ids = {row["video_id"] for row in csv.DictReader(handle)}
    train = [(_video_path(root, s["video_id"]), s["caption"], s["video_id"]) for s in sentences
             if s["video_id"] in train_ids]
    with open(os.path.join(root, "MSRVTT_JSFUSION_test.csv")) as handle:
        test = [(_video_path(root, row["video_id"]), row["sentence"], row["video_id"])
                for row in csv.DictReader(handle)]
    return train, test


def msvd_pairs(root):
    """raw-captions.pkl (video id -> list of token lists), train_list.txt, test_list.txt; the test set uses
    each video's first caption (one text per video, so the diagonal is the positive)."""
    with open(os.path.join(root, "raw-captions.pkl"), "rb") as handle:
        captions = pickle.load(handle)

    def split(name):
        with open(os.path.join(root, name)) as handle:
            return [line.strip() for line in handle if line.strip()]

    train = [(_video_path(root, v), " ".join(c), v) for v in split("train_list.txt") for c in captions[v]]
    test = [(_video_path(root, v), " ".join(captions[v][0]), v) for v in split("test_list.txt")]
    return train, test


def _paragraph_pairs(root, files, key_video, sentences_of):
    out = []
    for name in files:
        with open(os.path.join(root, name)) as handle:
            data = json.load(handle)
        items = data.items() if isinstance(data, dict) else ((entry[key_video], entry) for entry in data)
        out.append([(_video_path(root, video), " ".join(sentences_of(entry)), video) for video, entry in items])
    return out


def didemo_pairs(root):
    """train_data.json / test_data.json (lists of {video, description}): one paragraph per video."""
    def merged(name):
        with open(os.path.join(root, name)) as handle:
            data = json.load(handle)
        paragraphs = {}
        for entry in data:
            paragraphs.setdefault(entry["video"], []).append(entry["description"])
        return [(_video_path(root, v), " ".join(d), v) for v, d in paragraphs.items()]

    return merged("train_data.json"), merged("test_data.json")


def activitynet_pairs(root):
    """train.json and val_1.json ({video id: {sentences: [...]}}): paragraph-to-video, val1 as test."""
    train, test = _paragraph_pairs(root, ("train.json", "val_1.json"), None, lambda e: e["sentences"])
    return train, test


LOADERS = {"msrvtt": msrvtt_pairs, "msvd": msvd_pairs, "didemo": didemo_pairs, "activitynet": activitynet_pairs}


def datasets(name, settings):
    root = settings.get("data_root")
    if not root:
        raise ValueError(f"--data {name} needs --data-root (the folder of its annotation files and videos/)")
    train, test = LOADERS[name](root)
    size = settings.get("image_size", 224)
    augment = rand_augment() if settings.get("rand_augment", True) else None  # training only, as the reference
    return (VideoTextDataset(train, settings["max_frames"], size, augment),
            VideoTextDataset(test, settings["max_frames"], size))
