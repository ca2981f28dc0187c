"""`hbi explain`: the paper's visualisation of cross-modal interaction. For a caption (or a question) and a
video it draws, at each level, the exact Banzhaf interaction of every word or text cluster (rows) with
every frame or video cluster (columns): frames as thumbnails, clusters named by the words and frames the
model's own dpc_knn merged into them. One PNG per pair, or one self-contained HTML page for several.

`explain_pair` computes what a figure shows (labels, members, thumbnails, values); `render` only draws
it, so that what is drawn can be checked against the model."""

import base64
import functools
import html
import io
import os
import textwrap
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import hbi_ops
from hbi_model import build, checkpoint
from hbi_model.data import WordTokenizer, collate
from hbi_model.data.synthetic import CLIP_MEAN, CLIP_STD
from hbi_model.hierarchy import recording_assignments
from hbi_model.metrics import ranks_of_positives


def add_arguments(parser):
    """The flags of `hbi explain` (cli.py adds the ones every command shares)."""
    parser.add_argument(
        "--text", "--caption", dest="text", help="a caption (a question with --task qa); default: the test item's own"
    )
    parser.add_argument(
        "--video",
        help="a video file to explain instead of a test video (decoded like the "
        "data sets: 1 frame per second, uniformly picked up to --max-frames); needs --text",
    )
    parser.add_argument("--index", type=int, nargs="+", help="test items to explain (default: 0)")
    parser.add_argument("--top", type=int, help="explain the N test pairs the model ranks best")
    parser.add_argument(
        "--png",
        default="explain.png",
        help="the picture (several pairs without --html: one file each, NAME_<index>.png)",
    )
    parser.add_argument("--html", help="write one self-contained HTML page of every requested pair instead")
    parser.add_argument(
        "--show-special",
        action="store_true",
        default=None,
        help="also show the start and end tokens, and clusters holding no word or no frame",
    )
    parser.add_argument(
        "--no-rank", action="store_true", default=None, help="skip the retrieval rank (it encodes the whole test set)"
    )


# -------------------------------------------------------------------------------------------------
# What a figure shows


@dataclass
class LevelMap:
    """One level's panel. values [rows, columns]: the exact Banzhaf interaction of the shown rows (words,
    or text clusters) and columns (frames, or video clusters) of the pair's game at this level.
    row_tokens / column_frames: the token and frame positions merged into each row / column under the
    model's assignment (one each at the entity level); rows / columns: their indices at this level."""

    level: str
    values: torch.Tensor
    rows: list
    columns: list
    row_labels: list
    row_tokens: list
    column_frames: list
    similarity: float


@dataclass
class Explanation:
    caption: str
    tokens: dict  # token position -> the token as shown (real tokens only)
    special: set  # positions of the start and end tokens
    thumbnails: dict  # frame position -> uint8 [h, w, 3] (real frames only)
    levels: list
    score: float = None  # the inference score of the pair (what retrieval ranks by)
    rank: int = None
    candidates: int = None
    notes: list = field(default_factory=list)  # further lines of the title (QA: the answers)


def special_ids(tokenizer):
    """Ids of the start, end and padding tokens."""
    if isinstance(tokenizer, WordTokenizer):
        return {tokenizer.index[name] for name in ("<pad>", "<start>", "<end>")}
    return set(tokenizer.tokenizer.all_special_ids)


def token_strings(tokenizer, caption, ids):
    """The shown form of each token id: a word (BPE's end-of-word mark dropped); a word the closed
    vocabulary lacks shows as typed, as <unk:word>."""
    names = tokenizer.decode(ids)
    if not isinstance(tokenizer, WordTokenizer):
        return [name.replace("</w>", "") for name in names]
    specials, shown = special_ids(tokenizer), []
    typed = iter(caption.lower().split())  # the tokeniser's own split: one id per word after the start
    for i, name in zip(ids, names):
        if i not in specials:
            word = next(typed)
            name = f"<unk:{word}>" if name == "<unk>" else name
        shown.append(name)
    return shown


def thumbnails(frames, frame_mask, size=64):
    """{frame position: uint8 [h, w, 3]} of the real frames: CLIP's normalisation undone, at most `size`
    pixels a side."""
    positions = frame_mask.nonzero().flatten().tolist()
    pixels = (frames[positions].float().cpu() * CLIP_STD + CLIP_MEAN).clamp(0, 1)
    if pixels.shape[-1] > size:
        pixels = F.interpolate(pixels, size=(size, size), mode="area")
    images = (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return dict(zip(positions, images))


def _members(cluster_of, positions, count):
    return [[p for p in positions if cluster_of[p] == c] for c in range(count)]


def _label(members, tokens, special, show_special):
    shown = [tokens[p] for p in members if show_special or p not in special]
    return " ".join(shown) if shown else "(no token)"


@torch.no_grad()
def explain_pair(model, tokenizer, batch, show_special=False):
    """What the figure of the single pair in `batch` shows, level by level."""
    device = model.step.device
    ids, text_mask = batch["input_ids"], batch["attention_mask"].bool()
    caption = batch["caption"][0]
    features = model.encode(
        ids.to(device), text_mask.to(device), batch["pixel_values"].to(device), batch["frame_mask"].to(device)
    )
    with recording_assignments(model.text_levels) as text_idx, recording_assignments(model.video_levels) as video_idx:
        levels = model.levels(*features)
    word_positions = text_mask[0].nonzero().flatten().tolist()
    frame_positions = batch["frame_mask"][0].nonzero().flatten().tolist()
    tokens = dict(zip(word_positions, token_strings(tokenizer, caption, ids[0, word_positions].tolist())))
    special = {p for p in word_positions if int(ids[0, p]) in special_ids(tokenizer)}
    # The cluster of every entity token at each level: the identity, then dpc_knn's, then composed.
    text_cluster = torch.arange(ids.shape[1])
    video_cluster = torch.arange(batch["frame_mask"].shape[1])
    maps = []
    for depth, (level, t, tm, v, vm) in enumerate(levels):
        if depth:
            text_cluster = text_idx[depth - 1][0].cpu()[text_cluster]
            video_cluster = video_idx[depth - 1][0].cpu()[video_cluster]
        sim, (tn, vn, wt, wv) = model.level_similarity(level, t, tm, v, vm)
        tm = tm if tm is not None else torch.ones(tn.shape[:2], dtype=torch.bool, device=device)
        vm = vm if vm is not None else torch.ones(vn.shape[:2], dtype=torch.bool, device=device)
        pair_map = torch.einsum("btd,bvd->btv", tn, vn).float()
        interaction = hbi_ops.banzhaf_interaction(
            pair_map, tm, vm, wt.float().masked_fill(~tm, 0), wv.float().masked_fill(~vm, 0), estimator="exact"
        )[0].cpu()
        row_tokens = _members(text_cluster.tolist(), word_positions, tn.shape[1])
        column_frames = _members(video_cluster.tolist(), frame_positions, vn.shape[1])
        # Padding is no player (its rows are zero); start and end tokens and empty clusters on request.
        players = tm[0].cpu().tolist()
        rows = [
            r
            for r, members in enumerate(row_tokens)
            if players[r] and (show_special or any(p not in special for p in members))
        ]
        columns = [c for c, members in enumerate(column_frames) if members or (show_special and bool(vm[0, c]))]
        maps.append(
            LevelMap(
                level,
                interaction[rows][:, columns],
                rows,
                columns,
                [_label(row_tokens[r], tokens, special, show_special) for r in rows],
                [row_tokens[r] for r in rows],
                [column_frames[c] for c in columns],
                float(sim[0, 0]),
            )
        )
    return Explanation(caption, tokens, special, thumbnails(batch["pixel_values"][0], batch["frame_mask"][0]), maps)


# -------------------------------------------------------------------------------------------------
# Retrieval rank among the test set's videos


class Ranking:
    """The test set encoded once; the rank of a caption's video among the test videos, by the rule of
    hbi_model.metrics (ties count against the caption: every candidate scoring at least as high, the
    video itself included, is counted)."""

    def __init__(self, model, tokenizer, test_set, settings):
        from hbi_model.evaluate import encode_all, similarity_matrix

        self.model, self.similarity = model, functools.partial(similarity_matrix, model)
        loader = torch.utils.data.DataLoader(
            test_set,
            batch_size=settings.get("eval_batch_size", 64),
            num_workers=settings.get("workers", 0),
            collate_fn=functools.partial(collate, tokenizer=tokenizer, max_words=settings["max_words"]),
        )
        text, text_mask, self.videos, self.video_masks = encode_all(
            model, loader, model.step.device, not settings.get("quiet")
        )
        self.matrix = self.similarity(text, text_mask, self.videos, self.video_masks).float().cpu()
        self.ranks = ranks_of_positives(self.matrix)

    def best(self, count):
        """Indices of the `count` test pairs ranked best (then by score)."""
        order = sorted(range(len(self.ranks)), key=lambda i: (int(self.ranks[i]), -float(self.matrix[i, i])))
        return order[:count]

    def rank(self, batch, index=None, own_caption=False):
        """(score, rank, candidates) of the pair in `batch`: its video is test video `index` or, with index
        None, one more candidate beside the test videos."""
        if own_caption:
            return float(self.matrix[index, index]), int(self.ranks[index]), len(self.matrix)
        device = self.model.step.device
        text, text_mask, video, video_mask = self.model.encode(
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["pixel_values"].to(device),
            batch["frame_mask"].to(device),
        )
        if index is None:
            video, video_mask = torch.cat([video, self.videos]), torch.cat([video_mask, self.video_masks])
            index = 0
        else:
            video, video_mask = self.videos, self.video_masks
        row = self.similarity(text, text_mask, video, video_mask).float().cpu()[0]
        if not torch.isfinite(row).all():
            raise ValueError(
                "the caption's similarities to the test videos are not finite: the model's features "
                "or weights are not finite"
            )
        return float(row[index]), int((row >= row[index]).sum()), len(row)


# -------------------------------------------------------------------------------------------------
# Drawing

CELL = 0.42  # inches a word or frame takes in a map
FONT = 7


def _wrap(label, width=22):
    return "\n".join(textwrap.wrap(label, width)) or label


def title_lines(explanation):
    lines = [f"\u201c{explanation.caption}\u201d"]
    if explanation.rank is not None:
        lines.append(
            f"similarity {explanation.score:.3f}, rank {explanation.rank} of {explanation.candidates} test videos"
        )
    return lines + explanation.notes


def render(explanation):
    """The figure of an explanation: per level a heat map (colour scale symmetric around 0 over what it
    shows), the row labels, and under each column the thumbnails of its frames. Axes are labelled
    '<level> map' and '<level> frames'; each thumbnail's gid is 'frame <position>'."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    panels = []  # (level map, wrapped labels, label margin, row height, thumbnails a column at most), inches
    for level_map in explanation.levels:
        labels = [_wrap(label) for label in level_map.row_labels]
        lines = [line for label in labels for line in label.split("\n")]
        row_height = max(CELL, 0.13 * max((label.count("\n") + 1 for label in labels), default=1) + 0.06)
        stack = max((len(frames) for frames in level_map.column_frames), default=1)
        panels.append((level_map, labels, 0.055 * max(map(len, lines), default=1) + 0.2, row_height, stack))
    top, bottom, gap, colourbar = 0.75 + 0.16 * len(title_lines(explanation)), 0.15, 0.08, 0.75
    body = max(max(len(m.rows), 1) * row + gap + stack * CELL for m, _, _, row, stack in panels)
    width = 0.2 + sum(left + max(len(m.columns), 1) * CELL + colourbar for m, _, left, _, _ in panels)
    height = top + body + bottom
    fig = Figure(figsize=(width, height))
    fig.text(0.5, 1 - 0.2 / height, "\n".join(title_lines(explanation)), ha="center", va="top", fontsize=FONT + 2)

    def box(x, y_top, w, h):  # inches from the left and from the top -> figure fraction
        return [x / width, (height - y_top - h) / height, w / width, h / height]

    x = 0.1
    for level_map, labels, left, row_height, stack in panels:
        x += left
        columns, rows = max(len(level_map.columns), 1), max(len(level_map.rows), 1)
        map_width, map_height = columns * CELL, rows * row_height
        ax = fig.add_axes(box(x, top, map_width, map_height), label=f"{level_map.level} map")
        values = level_map.values.numpy()
        scale = float(abs(values).max()) if values.size else 0.0
        image = ax.imshow(
            values if values.size else [[0.0]],
            cmap="RdBu_r",
            vmin=-(scale or 1e-12),
            vmax=scale or 1e-12,
            aspect="auto",
            interpolation="nearest",
        )
        if level_map.level != "entity" and values.size <= 24:  # few clusters: room for their values
            for (r, c), value in np.ndenumerate(values):
                ax.text(
                    c,
                    r,
                    f"{value:.2g}",
                    ha="center",
                    va="center",
                    fontsize=FONT - 2,
                    color="white" if abs(value) > 0.6 * scale else "black",
                )
        ax.set_yticks(range(len(labels)), labels, fontsize=FONT)
        ax.set_xticks([])
        words = "words" if level_map.level == "entity" else "text clusters"
        frames = "frames" if level_map.level == "entity" else "video clusters"
        ax.set_title(
            f"{level_map.level} level: {words} \u00d7 {frames}\nsimilarity {level_map.similarity:.3f}",
            fontsize=FONT + 1,
        )
        cax = fig.add_axes(box(x + map_width + 0.08, top, 0.1, map_height), label=f"{level_map.level} colour bar")
        fig.colorbar(image, cax=cax).ax.tick_params(labelsize=FONT - 1)
        strip = fig.add_axes(box(x, top + map_height + gap, map_width, stack * CELL), label=f"{level_map.level} frames")
        for column, members in enumerate(level_map.column_frames):
            for k, frame in enumerate(members):
                strip.imshow(
                    explanation.thumbnails[frame],
                    extent=(column - 0.46, column + 0.46, k + 0.96, k + 0.04),
                    aspect="auto",
                    interpolation="nearest",
                    gid=f"frame {frame}",
                )
                strip.text(
                    column - 0.42,
                    k + 0.9,
                    str(frame),
                    color="white",
                    fontsize=FONT - 2,
                    bbox=dict(facecolor="black", alpha=0.6, pad=0.5, linewidth=0),
                )
        strip.set_xlim(-0.5, columns - 0.5)
        strip.set_ylim(stack, 0)
        strip.axis("off")
        x += map_width + colourbar
    return fig


def png_bytes(figure, dpi=110):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def write_html(path, explanations, sources):
    """One page: a section per pair with its caption, rank, picture (inline PNG) and cluster members."""
    sections = []
    for explanation, source in zip(explanations, sources):
        picture = base64.b64encode(png_bytes(render(explanation))).decode("ascii")
        clusters = "".join(
            f"<li>{m.level} level: text clusters "
            + " | ".join(html.escape(label) for label in m.row_labels)
            + "; video clusters of frames "
            + " | ".join(" ".join(map(str, frames)) for frames in m.column_frames)
            + "</li>"
            for m in explanation.levels
            if m.level != "entity"
        )
        lines = "".join(f"<p>{html.escape(line)}</p>" for line in title_lines(explanation)[1:])
        sections.append(
            f'<section class="pair"><h2>{html.escape(source)}: {html.escape(explanation.caption)}</h2>'
            f'{lines}<img alt="{html.escape(explanation.caption)}" src="data:image/png;base64,{picture}">'
            f"<ul>{clusters}</ul></section>"
        )
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>hbi explain</title><style>'
        "body{font-family:sans-serif;margin:2em} section{border-top:1px solid #ccc;padding:1em 0} "
        "img{max-width:100%}</style></head><body><h1>hbi explain: Banzhaf interaction per level</h1>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)


# -------------------------------------------------------------------------------------------------
# The command


def _video_item(settings, model):
    from hbi_model.data.video import load_video

    path = settings["video"]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--video {path}: no such file")
    size = model.encoders.clip.config.vision_config.image_size
    frames, mask = load_video(path, settings["max_frames"], size)
    if not mask.any():
        raise ValueError(f"--video {path}: no frame could be decoded")
    return {"frames": frames, "frame_mask": mask, "caption": settings["text"], "video_id": os.path.basename(path)}


def _check_flags(settings, qa):
    """Contradictory or impossible requests, before anything is loaded."""
    top = settings.get("top")
    if settings.get("video") and (settings.get("index") or top is not None):
        raise ValueError("give --video or test items (--index, --top), not both")
    if settings.get("video") and not settings.get("text"):
        raise ValueError("--video needs --text (the caption or question to explain it with)")
    if top is not None:
        if settings.get("index"):
            raise ValueError("give --index or --top, not both")
        if top < 1:
            raise ValueError(f"--top must be at least 1, not {top}")
        if qa or settings.get("no_rank"):
            raise ValueError("--top ranks retrieval pairs: it needs the retrieval task and no --no-rank")


def _indices(settings, test_set, ranking):
    if settings.get("top") is not None:
        return ranking.best(settings["top"])
    indices = settings.get("index") or [0]
    for index in indices:
        if not 0 <= index < len(test_set):
            raise ValueError(f"--index {index} is outside the test set (0 to {len(test_set) - 1})")
    return indices


def explain(settings):
    """Explain the requested pairs of a run (its checkpoint in --output); returns the explanations."""
    qa = settings.get("task") == "qa"
    _check_flags(settings, qa)
    if qa:
        from hbi_model.data.qa import qa_datasets

        _, test_set, vocabulary = qa_datasets(settings)
        tokenizer, model = build.qa_model(settings, len(vocabulary))
    else:
        tokenizer, model = build.model(settings)
        _, test_set = build.datasets(settings)
    if checkpoint.exists(settings["output"]):
        checkpoint.load(settings["output"], model, trainer=False)
    else:
        print(f"no checkpoint in {settings['output']}: explaining an untrained model")
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu")).eval()
    video = _video_item(settings, model) if settings.get("video") else None
    ranking = None if qa or settings.get("no_rank") else Ranking(model, tokenizer, test_set, settings)
    if video is not None:
        requests = [("video " + os.path.basename(settings["video"]), video, None)]
    else:
        requests = [(f"test item {i}", dict(test_set[i]), i) for i in _indices(settings, test_set, ranking)]
    explanations = []
    for source, item, index in requests:
        if not item["frame_mask"].any():
            raise ValueError(f"{source} ({item['video_id']}): its video has no decodable frame")
        own_caption = not settings.get("text")
        if not own_caption:
            item["caption"] = settings["text"]
        batch = collate([item], tokenizer, settings["max_words"])
        explanation = explain_pair(model, tokenizer, batch, bool(settings.get("show_special")))
        if ranking is not None:
            explanation.score, explanation.rank, explanation.candidates = ranking.rank(batch, index, own_caption)
        if qa:
            explanation.notes = _answers(model, batch, vocabulary, item.get("answer") if own_caption else None)
        explanations.append(explanation)
    if settings.get("html"):
        write_html(settings["html"], explanations, [source for source, _, _ in requests])
        print(f"wrote {settings['html']}: {len(explanations)} pairs")
        return explanations
    stem, extension = os.path.splitext(settings["png"])
    for (source, _, index), explanation in zip(requests, explanations):
        path = settings["png"] if len(requests) == 1 else f"{stem}_{index}{extension or '.png'}"
        with open(path, "wb") as handle:
            handle.write(png_bytes(render(explanation)))
        rank = f", rank {explanation.rank} of {explanation.candidates}" if explanation.rank is not None else ""
        print(
            f"wrote {path}: {', '.join(m.level for m in explanation.levels)} levels for {source}, "
            f"'{explanation.caption}'{rank}"
        )
    return explanations


@torch.no_grad()
def _answers(model, batch, vocabulary, answer):
    device = model.step.device
    logits = model.predict(
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        batch["pixel_values"].to(device),
        batch["frame_mask"].to(device),
    )
    lines = [f"predicted answer: {vocabulary.answers[int(logits.argmax(-1)[0])]}"]
    if answer is not None:
        lines.append(f"answer: {vocabulary.answers[answer]}" if answer >= 0 else "answer: (not in the vocabulary)")
    return lines
