"""Loaders on tiny video files the tests write themselves, a corrupt one among them."""

import csv
import json
import logging
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from hbi_model.data import SyntheticVideoText, WordTokenizer, collate
from hbi_model.data.annotations import AnnotationError
from hbi_model.data.real import datasets
from hbi_model.data.video import decode_frames, load_video, uniform_pick


def write_video(path, seconds=3, fps=4, width=48, height=36):
    """Frame n is a flat colour that changes every second, so the decoded frames can be identified."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for n in range(seconds * fps):
            image = np.zeros((height, width, 3), dtype=np.uint8)
            image[..., n // fps % 3] = 200  # red, green, blue, one per second
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_decoding_at_one_frame_per_second(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, seconds=3, fps=4)
    frames = decode_frames(path)
    assert frames.shape[0] == 3  # one per second
    dominant = [int(np.argmax(f.reshape(-1, 3).mean(0))) for f in frames]
    assert dominant == [0, 1, 2]


def test_uniform_picking_and_padding(tmp_path):
    assert uniform_pick(10, 4) == [0, 3, 6, 9] and uniform_pick(3, 5) == [0, 1, 2]
    path = tmp_path / "clip.mp4"
    write_video(path, seconds=5, fps=2)
    frames, mask = load_video(path, max_frames=8, size=32)
    assert frames.shape == (8, 3, 32, 32) and mask.tolist() == [True] * 5 + [False] * 3
    assert (frames[5:] == 0).all() and frames[:5].abs().sum() > 0
    frames, mask = load_video(path, max_frames=2, size=32)
    assert mask.all()


def test_unreadable_video_is_reported_and_skipped(tmp_path, caplog):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x01not a video" * 100)
    with caplog.at_level(logging.WARNING, logger="hbi_model.data"):
        frames, mask = load_video(bad, max_frames=4, size=32)
        _, missing_mask = load_video(tmp_path / "missing.mp4", max_frames=4, size=32)
    assert not mask.any() and not missing_mask.any() and (frames == 0).all()
    assert "corrupt.mp4" in caplog.text and "missing.mp4" in caplog.text


def write_msrvtt(root, train_videos=3, test_videos=1, corrupt="video3"):
    """A tiny MSR-VTT folder: videos video0... (the training ones first, then the test ones), two captions
    a video in MSRVTT_data.json, the 9k training list (with the corrupt video among them) and the 1k-A test
    file. Returns root."""
    (root / "videos").mkdir(parents=True)
    names = [f"video{i}" for i in range(train_videos + test_videos + 1)]
    train_names, test_names = names[:train_videos] + [corrupt], names[train_videos : train_videos + test_videos]
    for name in train_names[:-1] + test_names:
        write_video(root / "videos" / f"{name}.mp4", seconds=2, fps=2)
    (root / "videos" / f"{corrupt}.mp4").write_bytes(b"garbage")
    sentences = [
        {"video_id": name, "caption": f"caption {name} {k}"} for name in train_names + test_names for k in range(2)
    ]
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    with open(root / "MSRVTT_train.9k.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["video_id"]] + [[name] for name in train_names])
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(
            [["key", "vid_key", "video_id", "sentence"]]
            + [[f"ret{i}", f"msr{i}", name, f"a test sentence {i}"] for i, name in enumerate(test_names)]
        )
    return root


def test_msrvtt_annotations_and_videos(tmp_path):
    write_msrvtt(tmp_path, train_videos=2, test_videos=1, corrupt="video3")
    train, test = datasets("msrvtt", {"data_root": str(tmp_path), "max_frames": 3, "image_size": 32})
    assert len(train) == 6 and len(test) == 1  # every caption of every training video
    item = test[0]
    assert item["caption"] == "a test sentence 0" and item["frame_mask"].tolist() == [True, True, False]
    corrupt = [train[i] for i in range(len(train)) if train[i]["video_id"] == "video3"]
    assert corrupt and not corrupt[0]["frame_mask"].any()  # skipped, not a crash
    # RandAugment on training frames only: one draw for all of a video's frames, shapes unchanged.
    assert train.augment is not None and test.augment is None
    plain, _ = datasets(
        "msrvtt", {"data_root": str(tmp_path), "max_frames": 3, "image_size": 32, "rand_augment": False}
    )
    torch.manual_seed(1)
    augmented = [train[0]["frames"] for _ in range(4)]
    assert augmented[0].shape == plain[0]["frames"].shape
    assert any(not torch.equal(a, plain[0]["frames"]) for a in augmented)
    with pytest.raises(ValueError, match="data-root"):
        datasets("msrvtt", {"max_frames": 3})


def test_synthetic_set_is_deterministic_and_names_shapes_in_order():
    a, b = SyntheticVideoText(5, seed=3), SyntheticVideoText(5, seed=3)
    item = a[2]
    torch.testing.assert_close(item["frames"], b[2]["frames"])
    assert item["caption"] == " then ".join(f"a {c} {s}" for c, s, _ in item["events"])
    assert item["frame_mask"].sum() >= len(item["events"])
    tokenizer = WordTokenizer(SyntheticVideoText.vocabulary())
    batch = collate([a[i] for i in range(3)], tokenizer, 12)
    assert batch["input_ids"].shape == (3, 12) and (batch["input_ids"][:, 0] == 1).all()
    assert 3 not in batch["input_ids"]  # no unknown word


def test_msvd_didemo_activitynet_annotations(tmp_path):
    import pickle

    (tmp_path / "videos").mkdir()
    for name in ("v1", "v2", "v3"):
        write_video(tmp_path / "videos" / f"{name}.mp4", seconds=2, fps=2)
    settings = {"data_root": str(tmp_path), "max_frames": 2, "image_size": 32}
    # MSVD: captions as token lists; every training caption is a pair, one caption per test video.
    with open(tmp_path / "raw-captions.pkl", "wb") as handle:
        pickle.dump({"v1": [["a", "dog"], ["a", "cat"]], "v2": [["a", "car"]], "v3": [["rain"]]}, handle)
    (tmp_path / "train_list.txt").write_text("v1\nv2\n")
    (tmp_path / "test_list.txt").write_text("v3\n")
    train, test = datasets("msvd", settings)
    assert len(train) == 3 and test[0]["caption"] == "rain" and test[0]["frame_mask"].all()
    # DiDeMo: one paragraph of all of a video's sentences.
    (tmp_path / "train_data.json").write_text(
        json.dumps([{"video": "v1", "description": "one."}, {"video": "v1", "description": "two."}])
    )
    (tmp_path / "test_data.json").write_text(json.dumps([{"video": "v2", "description": "three."}]))
    train, test = datasets("didemo", settings)
    assert [p[1] for p in train.pairs] == ["one. two."] and test[0]["video_id"] == "v2"
    # ActivityNet Captions: paragraph-to-video, val_1 as the test split.
    (tmp_path / "train.json").write_text(json.dumps({"v1": {"sentences": ["a", "b"]}, "v2": {"sentences": ["c"]}}))
    (tmp_path / "val_1.json").write_text(json.dumps({"v3": {"sentences": ["d", "e"]}}))
    train, test = datasets("activitynet", settings)
    assert len(train) == 2 and test[0]["caption"] == "d e"


def _tiny_cli_args(root, output):
    return [
        "--data",
        "msrvtt",
        "--data-root",
        str(root),
        "--output",
        str(output),
        "--batch-size",
        "4",
        "--max-frames",
        "3",
        "--tiny-width",
        "16",
        "--tiny-layers",
        "1",
        "--temporal-layers",
        "1",
        "--temporal-heads",
        "2",
        "--attention-heads",
        "2",
        "--eval-batch-size",
        "4",
        "--quiet",
    ]


def test_msrvtt_end_to_end_with_the_tiny_clip(tmp_path):
    # Frames are decoded at the encoder's size (the tiny CLIP's 32, not 224); the unreadable training
    # video loads empty and training stays finite.
    root = write_msrvtt(tmp_path / "msrvtt", train_videos=3, test_videos=4)
    output = tmp_path / "run"

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "hbi_model.cli", *a],
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )

    trained = run("train", *_tiny_cli_args(root, output), "--max-steps", "2")
    assert trained.returncode == 0, trained.stderr
    assert "test set: 4 pairs" in trained.stdout and "R@1" in trained.stdout
    assert "skipping unreadable video" in trained.stderr and "video3.mp4" in trained.stderr
    results = json.loads((output / "results.json").read_text())
    assert results["step"] == 2 and all(np.isfinite(v) for v in results["last_losses"].values())
    evaluated = run("eval", *_tiny_cli_args(root, output))
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((output / "eval.json").read_text())
    assert metrics == results["metrics"]  # the same checkpoint, the same test set
    assert 0 <= metrics["text-to-video"]["R@1"] <= 100


def test_an_explicit_image_size_other_than_the_encoders_is_an_error(tmp_path):
    from hbi_model.cli import DEFAULTS
    from hbi_model.train import train

    root = write_msrvtt(tmp_path / "msrvtt")
    settings = dict(
        DEFAULTS,
        data="msrvtt",
        data_root=str(root),
        output=str(tmp_path / "run"),
        max_frames=3,
        max_words=32,
        tiny_width=16,
        tiny_layers=1,
        temporal_layers=1,
        temporal_heads=2,
        attention_heads=2,
        batch_size=2,
        max_steps=1,
        quiet=True,
        image_size=224,
    )
    with pytest.raises(ValueError, match="image_size 224 does not match the CLIP encoder's 32"):
        train(settings)


MALFORMED = [  # (file, content, what the error must say)
    ("MSRVTT_data.json", "", "MSRVTT_data.json is empty"),
    ("MSRVTT_data.json", '{"sentences": [{"video_id": "video0", ', "MSRVTT_data.json is not valid JSON"),
    ("MSRVTT_data.json", "{}", "MSRVTT_data.json: the top level has no key 'sentences'"),
    ("MSRVTT_data.json", '{"sentences": {}}', "MSRVTT_data.json: 'sentences' should be a list, got dict"),
    (
        "MSRVTT_data.json",
        '{"sentences": [{"video_id": "video0"}]}',
        r"MSRVTT_data.json: sentences\[0\] has no key 'caption'",
    ),
    ("MSRVTT_data.json", '{"sentences": []}', "no training pair.*MSRVTT_data.json"),
    ("MSRVTT_train.9k.csv", "vid\nvideo0\n", "MSRVTT_train.9k.csv has no column 'video_id'"),
    ("MSRVTT_train.9k.csv", "", "MSRVTT_train.9k.csv has no column 'video_id'.*empty"),
    ("MSRVTT_JSFUSION_test.csv", "key,video_id\nret0,video2\n", "MSRVTT_JSFUSION_test.csv has no column 'sentence'"),
    ("MSRVTT_JSFUSION_test.csv", "key,video_id,sentence\n", "no test pair.*MSRVTT_JSFUSION_test.csv"),
]


@pytest.mark.parametrize("name, content, message", MALFORMED)
def test_malformed_msrvtt_files_are_named(tmp_path, name, content, message):
    root = write_msrvtt(tmp_path)
    (root / name).write_text(content)
    with pytest.raises(AnnotationError, match=f"(?s){message}"):
        datasets("msrvtt", {"data_root": str(root), "max_frames": 3, "image_size": 32})


def test_malformed_msvd_didemo_activitynet_files_are_named(tmp_path):
    settings = {"data_root": str(tmp_path), "max_frames": 2, "image_size": 32}
    (tmp_path / "raw-captions.pkl").write_bytes(b"\x80\x04truncated")
    (tmp_path / "train_list.txt").write_text("v1\n")
    (tmp_path / "test_list.txt").write_text("v2\n")
    with pytest.raises(AnnotationError, match="raw-captions.pkl is not a readable pickle"):
        datasets("msvd", settings)
    import pickle

    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"v1": [["a", "dog"]]}))
    with pytest.raises(AnnotationError, match="raw-captions.pkl has no caption of video 'v2'.*test_list.txt"):
        datasets("msvd", settings)
    (tmp_path / "train_data.json").write_text(json.dumps([{"video": "v1"}]))
    (tmp_path / "test_data.json").write_text(json.dumps([{"video": "v2", "description": "x"}]))
    with pytest.raises(AnnotationError, match=r"train_data.json: entry 0 has no key 'description'"):
        datasets("didemo", settings)
    (tmp_path / "train_data.json").write_text(json.dumps({"v1": "one"}))
    with pytest.raises(AnnotationError, match=r"train_data.json: the top level should be a list, got dict"):
        datasets("didemo", settings)
    (tmp_path / "train.json").write_text(json.dumps({"v1": {"timestamps": []}}))
    (tmp_path / "val_1.json").write_text(json.dumps({"v2": {"sentences": ["x"]}}))
    with pytest.raises(AnnotationError, match=r"train.json: video 'v1' has no key 'sentences'"):
        datasets("activitynet", settings)
    (tmp_path / "train.json").write_text("[]")
    with pytest.raises(AnnotationError, match=r"train.json: the top level should be a dict, got list"):
        datasets("activitynet", settings)
