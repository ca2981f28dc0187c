"""Video-QA data: the answer vocabulary, MSRVTT-QA (JSON lines of video_id, question, answer) and a
synthetic QA set asked about the synthetic videos (what colour or shape appears first or last, how many
shapes appear). Items carry 'caption' (the question), 'answer' (an id, -1 when unknown: counted wrong)
and 'question_type'."""

import os

import torch

from hbi_model.data.annotations import AnnotationError, expect, field, read_json, read_json_records
from hbi_model.data.real import _video_path
from hbi_model.data.synthetic import COLOURS, SHAPES, SyntheticVideoText
from hbi_model.data.video import load_video, rand_augment

UNKNOWN = -1
COUNTS = {2: "two", 3: "three", 4: "four"}


class AnswerVocabulary:
    """answer -> id; an answer outside the vocabulary maps to -1 (never right)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def from_file(cls, path):
        """train_ans2label.json: {answer: id}, the ids 0 to n - 1."""
        mapping = expect(read_json(path), dict, path, "the top level")
        answers = [None] * len(mapping)
        for answer, i in mapping.items():
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(answers) or answers[i] is not None:
                raise AnnotationError(
                    f"{path}: answers must map to distinct ids 0 to {len(answers) - 1}, got {answer!r}: {i!r}"
                )
            answers[i] = answer
        return cls(answers)

    def __len__(self):
        return len(self.answers)

    def encode(self, answer):
        return self.index.get(answer, UNKNOWN)


class SyntheticQA(torch.utils.data.Dataset):
    QUESTIONS = (
        ("colour", "what colour appears first"),
        ("shape", "what shape appears first"),
        ("colour", "what colour appears last"),
        ("shape", "what shape appears last"),
        ("count", "how many shapes appear"),
    )

    def __init__(self, num_videos=2000, max_frames=6, seed=0, **kwargs):
        self.videos = SyntheticVideoText(num_videos, max_frames=max_frames, seed=seed, **kwargs)
        self.vocabulary = self.answer_vocabulary()

    @staticmethod
    def answer_vocabulary():
        return AnswerVocabulary(list(COLOURS) + list(SHAPES) + list(COUNTS.values()))

    @staticmethod
    def words():
        return sorted({w for _, q in SyntheticQA.QUESTIONS for w in q.split()})

    def __len__(self):
        return len(self.videos)

    def question(self, index):
        """(question, answer id, type), without rendering the video."""
        kind, question = self.QUESTIONS[index % len(self.QUESTIONS)]
        events, _ = self.videos.events(index)
        event = events[0] if "first" in question else events[-1]
        answer = COUNTS[len(events)] if kind == "count" else (event[0] if kind == "colour" else event[1])
        return question, self.vocabulary.encode(answer), kind

    def answer_table(self):
        rows = [self.question(i) for i in range(len(self))]
        return torch.tensor([r[1] for r in rows]), [r[2] for r in rows]

    def __getitem__(self, index):
        item = dict(self.videos[index])
        question, answer, kind = self.question(index)
        item.update(caption=question, answer=answer, question_type=kind)
        return item


class MSRVTTQA(torch.utils.data.Dataset):
    """One split of MSRVTT-QA: <root>/<split>_qa.json (JSON lines or a JSON list), videos in <root>/videos/.
    The question type is the question's first word (what, who, how, when, where)."""

    def __init__(self, root, split, vocabulary, max_frames, size=224, augment=None):
        path = os.path.join(root, f"{split}_qa.json")
        rows = read_json_records(path)
        for i, row in enumerate(rows):  # checked now, not in a data-loader worker hours into a run
            for key in ("video_id", "question", "answer"):
                field(row, key, path, f"record {i}")
        self.rows, self.root, self.vocabulary = rows, root, vocabulary
        self.max_frames, self.size, self.augment = max_frames, size, augment

    def __len__(self):
        return len(self.rows)

    def answer_table(self):
        types = [r["question"].split()[0].lower() if r["question"].split() else "other" for r in self.rows]
        return torch.tensor([self.vocabulary.encode(r["answer"]) for r in self.rows]), types

    def __getitem__(self, index):
        row = self.rows[index]
        video_id = str(row["video_id"])
        video_id = video_id if video_id.startswith("video") else f"video{video_id}"
        frames, mask = load_video(_video_path(self.root, video_id), self.max_frames, self.size, augment=self.augment)
        question = row["question"]
        return {
            "frames": frames,
            "frame_mask": mask,
            "caption": question,
            "video_id": video_id,
            "answer": self.vocabulary.encode(row["answer"]),
            "question_type": question.split()[0].lower() if question.split() else "other",
        }


def qa_vocabulary(settings):
    """The answer vocabulary: the synthetic set's, or MSRVTT-QA's train_ans2label.json."""
    if settings.get("data", "synthetic") == "synthetic":
        return SyntheticQA.answer_vocabulary()
    if settings.get("data") != "msrvtt":
        raise ValueError("video QA runs on --data synthetic or --data msrvtt (MSRVTT-QA)")
    return AnswerVocabulary.from_file(os.path.join(_qa_root(settings), "train_ans2label.json"))


def _qa_root(settings):
    root = settings.get("data_root")
    if not root:
        raise ValueError(
            "--data msrvtt --task qa needs --data-root (train_qa.json, test_qa.json, train_ans2label.json, videos/)"
        )
    return root


def qa_datasets(settings, vocabulary=None):
    """(train, test, vocabulary); vocabulary: qa_vocabulary(settings) unless given."""
    vocabulary = qa_vocabulary(settings) if vocabulary is None else vocabulary
    if settings.get("data", "synthetic") == "synthetic":
        common = dict(max_frames=settings["max_frames"])
        train = SyntheticQA(settings["num_train"], seed=settings["seed"] * 2 + 1, **common)
        test = SyntheticQA(settings["num_test"], seed=settings["seed"] * 2 + 2, **common)
        return train, test, vocabulary
    root = _qa_root(settings)
    size = settings.get("image_size", 224)
    augment = rand_augment() if settings.get("rand_augment", True) else None
    return (
        MSRVTTQA(root, "train", vocabulary, settings["max_frames"], size, augment),
        MSRVTTQA(root, "test", vocabulary, settings["max_frames"], size),
        vocabulary,
    )


def accuracy(predictions, answers, types):
    """Top-1 accuracy overall and per question type, in percent; unknown answers (-1) count as wrong."""
    correct = predictions == answers
    out = {"overall": 100.0 * correct.float().mean().item() if len(answers) else float("nan")}
    for kind in sorted(set(types)):
        rows = torch.tensor([t == kind for t in types])
        out[kind] = 100.0 * correct[rows].float().mean().item()
    return out


def majority_baseline(train_answers, test_answers, test_types):
    """Accuracy of always answering the most frequent training answer."""
    known = train_answers[train_answers >= 0]
    majority = torch.mode(known).values if len(known) else torch.tensor(0)
    return accuracy(torch.full_like(test_answers, int(majority)), test_answers, test_types)
