"""`hbi explain` draws what the model computed: the caption's words and the real frames on the entity
map's axes, every cluster labelled with exactly the words and frames the model's dpc_knn merged into it,
the exact Banzhaf interaction of the pair as the values, the pair's rank in the title; the HTML page
holds one section per pair. The expected content is recomputed here from the model's modules."""

import base64
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import hbi_ops
from hbi_model import build, checkpoint
from hbi_model.cli import DEFAULTS
from hbi_model.data import collate
from hbi_model.data.synthetic import CLIP_MEAN, CLIP_STD
from hbi_model.explain import explain, explain_pair, render
from hbi_model.hierarchy import Level, recording_assignments

SMALL = dict(
    DEFAULTS,
    num_train=8,
    num_test=8,
    max_words=16,
    max_frames=6,
    tiny_width=16,
    tiny_layers=1,
    temporal_layers=1,
    temporal_heads=2,
    attention_heads=2,
    quiet=True,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder holding a randomly initialised model's checkpoint, and that model."""
    torch.manual_seed(1)
    tokenizer, model = build.model(SMALL)
    model.eval()
    output = tmp_path_factory.mktemp("run")
    checkpoint.save(output, model, {"step": 1})
    _, test_set = build.datasets(SMALL)
    return dict(SMALL, output=str(output)), tokenizer, model, test_set


def _padded_item(test_set, index):
    """A test item with at least one padded frame (whatever the data set's clip lengths)."""
    item = dict(test_set[index])
    mask = item["frame_mask"].clone()
    if mask.all():
        mask[-1] = False
    item["frame_mask"], item["frames"] = mask, item["frames"] * mask[:, None, None, None]
    return item


def _axes(figure, label):
    return next(ax for ax in figure.axes if ax.get_label() == label)


def _row_labels(ax):
    return [tick.get_text().replace("\n", " ") for tick in ax.get_yticklabels()]


def _thumbnails(ax):
    """{column: [frame positions]} of a thumbnail strip, and {frame: image array}."""
    columns, images = {}, {}
    for image in ax.images:
        left, right, _, _ = image.get_extent()
        frame = int(image.get_gid().removeprefix("frame "))
        columns.setdefault(round((left + right) / 2), []).append(frame)
        images[frame] = np.asarray(image.get_array())
    return columns, images


@torch.no_grad()
def _expected(model, batch):
    """Per level, from the model's own modules: the cluster of every entity token and frame (dpc_knn
    re-run through each level's CTM, composed across levels) and the exact Banzhaf interaction."""
    text, text_mask, video, video_mask = model.encode(
        batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["frame_mask"]
    )
    text_idx = [model.text_levels[0].ctm(text, text_mask)[3][0]]
    text_idx.append(model.text_levels[1].ctm(model.text_levels[0](text, text_mask))[3][0])
    video_idx = [model.video_levels[0].ctm(video, video_mask)[3][0]]
    video_idx.append(model.video_levels[1].ctm(model.video_levels[0](video, video_mask))[3][0])
    text_cluster = {"entity": torch.arange(text.shape[1]), "action": text_idx[0], "event": text_idx[1][text_idx[0]]}
    video_cluster = {
        "entity": torch.arange(video.shape[1]),
        "action": video_idx[0],
        "event": video_idx[1][video_idx[0]],
    }
    out = {}
    for level, t, tm, v, vm in model.levels(text, text_mask, video, video_mask):
        _, (tn, vn, wt, wv) = model.level_similarity(level, t, tm, v, vm)
        tm = torch.ones(tn.shape[:2], dtype=torch.bool) if tm is None else tm
        vm = torch.ones(vn.shape[:2], dtype=torch.bool) if vm is None else vm
        interaction = hbi_ops.banzhaf_interaction(
            torch.einsum("btd,bvd->btv", tn, vn), tm, vm, wt.masked_fill(~tm, 0), wv.masked_fill(~vm, 0)
        )[0]
        out[level] = (text_cluster[level], video_cluster[level], interaction)
    return out


def test_recording_assignments_keeps_what_each_level_ran_and_leaves_no_hook():
    torch.manual_seed(0)
    level = Level(8, 0.5, k=2, heads=2).eval()
    x, mask = torch.randn(3, 7, 8), torch.arange(7)[None] < torch.tensor([[7], [5], [2]])
    expected_idx = level.ctm(x, mask)[3]
    plain = level(x, mask)
    with recording_assignments([level]) as assignments:
        recorded = level(x, mask)
    assert torch.equal(recorded, plain)
    assert torch.equal(assignments[0], expected_idx)
    assert not level.ctm._forward_hooks


def test_entity_map_shows_the_caption_words_and_the_real_frames(run):
    settings, tokenizer, model, test_set = run
    item = _padded_item(test_set, 3)
    batch = collate([item], tokenizer, settings["max_words"])
    words = item["caption"].split()
    for show_special, expected in ((False, words), (True, ["<start>", *words, "<end>"])):
        figure = render(explain_pair(model, tokenizer, batch, show_special))
        assert _row_labels(_axes(figure, "entity map")) == expected
        columns, images = _thumbnails(_axes(figure, "entity frames"))
        real = item["frame_mask"].nonzero().flatten().tolist()
        assert len(real) < settings["max_frames"] and sorted(images) == real
        assert columns == {c: [frame] for c, frame in enumerate(real)}
        for frame in real:  # the frame itself, CLIP's normalisation undone
            pixels = ((item["frames"][frame] * CLIP_STD + CLIP_MEAN).clamp(0, 1) * 255).permute(1, 2, 0).numpy()
            assert np.abs(images[frame].astype(float) - pixels).max() <= 0.51


def test_cluster_labels_hold_exactly_the_members_of_the_models_assignment(run):
    settings, tokenizer, model, test_set = run
    for index in (0, 5):
        item = _padded_item(test_set, index)
        batch = collate([item], tokenizer, settings["max_words"])
        words = item["caption"].split()  # word w at token position w + 1, after the start token
        expected = _expected(model, batch)
        real_frames = item["frame_mask"].nonzero().flatten().tolist()
        figure = render(explain_pair(model, tokenizer, batch))
        merged_somewhere = False
        for level in ("action", "event"):
            text_cluster, video_cluster, _ = expected[level]
            members = {}
            for w, word in enumerate(words):
                members.setdefault(int(text_cluster[w + 1]), []).append(word)
            assert _row_labels(_axes(figure, f"{level} map")) == [" ".join(members[c]) for c in sorted(members)]
            frames = {}
            for f in real_frames:
                frames.setdefault(int(video_cluster[f]), []).append(f)
            columns, _ = _thumbnails(_axes(figure, f"{level} frames"))
            assert columns == {j: frames[c] for j, c in enumerate(sorted(frames))}
            merged_somewhere |= any(len(m) > 1 for m in members.values()) and any(len(f) > 1 for f in frames.values())
        assert merged_somewhere  # the test saw clusters of several words and several frames
        # With the special tokens shown, every cluster is a row, its label holding them too.
        tokens = ["<start>", *words, "<end>"]
        shown = render(explain_pair(model, tokenizer, batch, show_special=True))
        for level in ("action", "event"):
            text_cluster, _, interaction = expected[level]
            labels = [
                " ".join(tokens[p] for p in range(len(tokens)) if int(text_cluster[p]) == c) or "(no token)"
                for c in range(interaction.shape[0])
            ]
            assert _row_labels(_axes(shown, f"{level} map")) == labels


def test_values_drawn_are_the_exact_banzhaf_interaction_of_the_pair(run):
    settings, tokenizer, model, test_set = run
    item = _padded_item(test_set, 2)
    batch = collate([item], tokenizer, settings["max_words"])
    expected = _expected(model, batch)
    words = len(item["caption"].split())
    real_frames = item["frame_mask"].nonzero().flatten().tolist()
    figure = render(explain_pair(model, tokenizer, batch))
    for level, (text_cluster, video_cluster, interaction) in expected.items():
        if level == "entity":
            rows, columns = list(range(1, words + 1)), real_frames
        else:
            rows = sorted({int(text_cluster[w]) for w in range(1, words + 1)})
            columns = sorted({int(video_cluster[f]) for f in real_frames})
        image = _axes(figure, f"{level} map").images[0]
        shown = torch.as_tensor(np.asarray(image.get_array()))
        torch.testing.assert_close(shown, interaction[rows][:, columns], rtol=1e-6, atol=1e-8)
        scale = float(interaction[rows][:, columns].abs().max())
        assert image.get_clim() == pytest.approx((-scale, scale), rel=1e-6)


@torch.no_grad()
def test_title_holds_the_pair_similarity_and_its_rank_among_the_test_videos(run, tmp_path):
    settings, tokenizer, model, test_set = run
    index, caption = 4, "a red circle then a blue square"
    (explanation,) = explain(dict(settings, index=[index], text=caption, png=str(tmp_path / "pair.png")))
    # The rank by scoring the caption against every test video with the model's inference score.
    items = [dict(test_set[i], caption=caption) for i in range(len(test_set))]
    batch = collate(items, tokenizer, settings["max_words"])
    text, text_mask, video, video_mask = model.encode(
        batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["frame_mask"]
    )
    scores = model.score(text[:1], text_mask[:1], video, video_mask)[0]
    rank = int((scores >= scores[index]).sum())
    assert (explanation.rank, explanation.candidates) == (rank, len(test_set))
    assert explanation.score == pytest.approx(float(scores[index]), abs=1e-5)
    title = render(explanation).texts[0].get_text()
    assert caption in title and f"similarity {float(scores[index]):.3f}" in title
    assert f"rank {rank} of {len(test_set)} test videos" in title
    assert (tmp_path / "pair.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.inside, self.heading, self.sources = [], False, False, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.sources += [attrs[key] for key in ("src", "href") if key in attrs]
        if tag == "section":
            self.inside = True
            self.sections.append({"heading": "", "images": []})
        elif tag == "h2" and self.inside:
            self.heading = True
        elif tag == "img" and self.inside:
            self.sections[-1]["images"].append(attrs["src"])

    def handle_endtag(self, tag):
        self.inside = self.inside and tag != "section"
        self.heading = self.heading and tag != "h2"

    def handle_data(self, data):
        if self.heading:
            self.sections[-1]["heading"] += data


def _page(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_html_page_has_one_self_contained_section_per_requested_pair(run, tmp_path):
    settings, tokenizer, model, test_set = run
    path = tmp_path / "pairs.html"
    explanations = explain(dict(settings, index=[0, 5, 7], html=str(path)))
    page = _page(path)
    assert len(page.sections) == 3 and len(explanations) == 3
    for section, index in zip(page.sections, (0, 5, 7)):
        assert test_set[index]["caption"] in section["heading"] and f"test item {index}" in section["heading"]
        (image,) = section["images"]
        assert image.startswith("data:image/png;base64,")
        assert base64.b64decode(image.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(source.startswith("data:") for source in page.sources)  # nothing fetched from elsewhere

    explanations = explain(dict(settings, top=3, html=str(path)))
    assert len(_page(path).sections) == 3
    with torch.no_grad():  # every test pair's rank, from the model's inference score
        batch = collate([test_set[i] for i in range(len(test_set))], tokenizer, settings["max_words"])
        scores = model.score(
            *model.encode(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["frame_mask"])
        )
    ranks = (scores >= scores.diagonal()[:, None]).sum(1)
    assert sorted(e.rank for e in explanations) == sorted(ranks.tolist())[:3]


def _write_clip(path, colours, fps=2, size=64):
    """A clip holding colours[s] during second s."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for colour in colours:
            for _ in range(fps):
                image = np.zeros((size, size, 3), np.uint8)
                image[...] = colour
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_any_video_file_and_text_decoded_like_the_data_sets(run, tmp_path):
    settings, _, _, test_set = run
    path = tmp_path / "clip.mp4"
    colours = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]
    _write_clip(path, colours)
    caption = "a green square then a red circle"
    (explanation,) = explain(dict(settings, video=str(path), text=caption, png=str(tmp_path / "clip.png")))
    figure = render(explanation)
    assert _row_labels(_axes(figure, "entity map")) == caption.split()
    _, images = _thumbnails(_axes(figure, "entity frames"))
    assert sorted(images) == [0, 1, 2]  # 1 frame per second of a 3 s clip
    for frame, colour in enumerate(colours):
        assert images[frame].reshape(-1, 3).mean(0).argmax() == int(np.argmax(colour))
    assert explanation.candidates == len(test_set) + 1 and 1 <= explanation.rank <= len(test_set) + 1


def test_question_words_against_frames_for_video_qa(tmp_path):
    from hbi_model.data.qa import qa_datasets

    settings = dict(SMALL, task="qa", output=str(tmp_path / "qa"))
    _, test_set, vocabulary = qa_datasets(settings)
    torch.manual_seed(2)
    tokenizer, model = build.qa_model(settings, len(vocabulary))
    model.eval()
    checkpoint.save(settings["output"], model, {"step": 1})
    (explanation,) = explain(dict(settings, index=[1], png=str(tmp_path / "qa.png")))
    item = test_set[1]
    figure = render(explanation)
    assert _row_labels(_axes(figure, "entity map")) == item["caption"].split()
    batch = collate([item], tokenizer, settings["max_words"])
    predicted = model.predict(
        batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["frame_mask"]
    ).argmax(-1)[0]
    assert explanation.notes == [
        f"predicted answer: {vocabulary.answers[int(predicted)]}",
        f"answer: {vocabulary.answers[item['answer']]}",
    ]
    assert explanation.rank is None and "rank" not in figure.texts[0].get_text()


def test_bad_requests_are_errors_that_name_the_flag(run, tmp_path):
    settings, _, _, test_set = run
    png = str(tmp_path / "x.png")
    with pytest.raises(ValueError, match="--index 8 is outside the test set"):
        explain(dict(settings, index=[len(test_set)], png=png))
    with pytest.raises(FileNotFoundError, match="--video"):
        explain(dict(settings, video=str(tmp_path / "missing.mp4"), text="a red circle", png=png))
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="--video .*junk.mp4: no frame could be decoded"):
        explain(dict(settings, video=str(tmp_path / "junk.mp4"), text="a red circle", png=png))
    with pytest.raises(ValueError, match="--video needs --text"):
        explain(dict(settings, video=str(tmp_path / "junk.mp4"), png=png))
    with pytest.raises(ValueError, match="give --video or test items"):
        explain(dict(settings, video=str(tmp_path / "junk.mp4"), text="a red circle", index=[1], png=png))
    with pytest.raises(ValueError, match="--top must be at least 1"):
        explain(dict(settings, top=0, png=png))
    with pytest.raises(ValueError, match="not both"):
        explain(dict(settings, top=2, index=[1], png=png))
    with pytest.raises(ValueError, match="--top ranks retrieval pairs"):
        explain(dict(settings, top=2, no_rank=True, png=png))
