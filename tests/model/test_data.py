"""Loaders on tiny video files the tests write themselves, a corrupt one among them."""
import csv
import json
import logging

import av
import numpy as np
import pytest
import torch

from hbi_model.data import SyntheticVideoText, WordTokenizer, collate
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


def test_msrvtt_annotations_and_videos(tmp_path):
    (tmp_path / "videos").mkdir()
    for i in range(3):
        write_video(tmp_path / "videos" / f"video{i}.mp4", seconds=2, fps=2)
    (tmp_path / "videos" / "video3.mp4").write_bytes(b"garbage")
    sentences = [{"video_id": f"video{i}", "caption": f"caption {i} {k}"} for i in range(4) for k in range(2)]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    with open(tmp_path / "MSRVTT_train.9k.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["video_id"], ["video0"], ["video1"], ["video3"]])
    with open(tmp_path / "MSRVTT_JSFUSION_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["key", "vid_key", "video_id", "sentence"], ["ret0", "msr2", "video2", "a test sentence"]])
    train, test = datasets("msrvtt", {"data_root": str(tmp_path), "max_frames": 3, "image_size": 32})
    assert len(train) == 6 and len(test) == 1  # every caption of every training video
    item = test[0]
    assert item["caption"] == "a test sentence" and item["frame_mask"].tolist() == [True, True, False]
    corrupt = [train[i] for i in range(len(train)) if train[i]["video_id"] == "video3"]
    assert corrupt and not corrupt[0]["frame_mask"].any()  # skipped, not a crash
    # RandAugment on training frames only: one draw for all of a video's frames, shapes unchanged.
    assert train.augment is not None and test.augment is None
    plain, _ = datasets("msrvtt", {"data_root": str(tmp_path), "max_frames": 3, "image_size": 32,
                                   "rand_augment": False})
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
    (tmp_path / "train_data.json").write_text(json.dumps([{"video": "v1", "description": "one."},
                                                          {"video": "v1", "description": "two."}]))
    (tmp_path / "test_data.json").write_text(json.dumps([{"video": "v2", "description": "three."}]))
    train, test = datasets("didemo", settings)
    assert [p[1] for p in train.pairs] == ["one. two."] and test[0]["video_id"] == "v2"
    # ActivityNet Captions: paragraph-to-video, val_1 as the test split.
    (tmp_path / "train.json").write_text(json.dumps({"v1": {"sentences": ["a", "b"]}, "v2": {"sentences": ["c"]}}))
    (tmp_path / "val_1.json").write_text(json.dumps({"v3": {"sentences": ["d", "e"]}}))
    train, test = datasets("activitynet", settings)
    assert len(train) == 2 and test[0]["caption"] == "d e"
