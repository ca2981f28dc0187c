"""Video QA: answer vocabulary (unknown answers), the answer head, a training step, MSRVTT-QA files."""

import json

import pytest
import torch

from hbi_model import build
from hbi_model.cli import DEFAULTS
from hbi_model.data import collate
from hbi_model.data.annotations import AnnotationError
from hbi_model.data.qa import MSRVTTQA, UNKNOWN, AnswerVocabulary, SyntheticQA, accuracy, majority_baseline
from hbi_model.qa import HBIQA, AnswerHead

SMALL = dict(
    DEFAULTS,
    num_train=16,
    num_test=8,
    batch_size=4,
    max_words=8,
    max_frames=4,
    tiny_width=16,
    tiny_layers=1,
    temporal_layers=1,
    temporal_heads=2,
    attention_heads=2,
    banzhaf_samples=8,
    quiet=True,
    clip_lr_scale=1.0,
)


def test_answer_vocabulary_and_unknown_answers(tmp_path):
    path = tmp_path / "train_ans2label.json"
    path.write_text(json.dumps({"man": 0, "dog": 1, "two": 2}))
    vocabulary = AnswerVocabulary.from_file(path)
    assert len(vocabulary) == 3 and vocabulary.encode("dog") == 1 and vocabulary.encode("zebra") == UNKNOWN
    # An unknown answer is wrong whatever is predicted; accuracy per type.
    predictions = torch.tensor([1, 0, 2, 0])
    answers = torch.tensor([1, UNKNOWN, 2, 1])
    out = accuracy(predictions, answers, ["what", "what", "how", "who"])
    assert out["overall"] == 50.0 and out["what"] == 50.0 and out["how"] == 100.0 and out["who"] == 0.0
    baseline = majority_baseline(torch.tensor([1, 1, 0, UNKNOWN]), answers, ["what"] * 4)
    assert baseline["overall"] == 50.0  # always "dog"


def test_msrvtt_qa_files(tmp_path):
    (tmp_path / "train_ans2label.json").write_text(json.dumps({"man": 0, "dog": 1}))
    lines = [
        {"video_id": 7, "question": "what is running", "answer": "dog"},
        {"video_id": "video8", "question": "who talks", "answer": "woman"},
    ]
    (tmp_path / "test_qa.json").write_text("\n".join(json.dumps(r) for r in lines))
    vocabulary = AnswerVocabulary.from_file(tmp_path / "train_ans2label.json")
    data = MSRVTTQA(str(tmp_path), "test", vocabulary, max_frames=2, size=32)
    answers, types = data.answer_table()
    assert answers.tolist() == [1, UNKNOWN] and types == ["what", "who"]
    item = data[0]  # video7.mp4 is missing: reported and skipped, not a crash
    assert item["video_id"] == "video7" and not item["frame_mask"].any() and item["answer"] == 1


def test_synthetic_questions_have_the_right_answers():
    data = SyntheticQA(10, seed=4)
    for i in range(10):
        item = data[i]
        events = item["events"]
        answer = data.vocabulary.answers[item["answer"]]
        if item["question_type"] == "count":
            assert answer == {2: "two", 3: "three"}[len(events)]
        else:
            event = events[0] if "first" in item["caption"] else events[-1]
            assert answer == (event[0] if item["question_type"] == "colour" else event[1])


def test_answer_head_shapes_and_gradcheck_float64():
    head = AnswerHead(8, num_answers=5).double().eval()  # eval: no dropout for gradcheck
    text, video = (
        torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True),
    )
    text_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    assert head(text, text_mask, video, None).shape == (2, 5)
    assert torch.autograd.gradcheck(lambda t, v: head(t, text_mask, v, None), (text, video), eps=1e-6, atol=1e-6)
    # padded words take no part
    text2 = text.detach().clone()
    text2[0, 4:] = 100.0
    torch.testing.assert_close(
        head(text2, text_mask, video.detach(), None), head(text.detach(), text_mask, video.detach(), None)
    )


def test_qa_training_step_lowers_the_loss():
    torch.manual_seed(0)
    data = SyntheticQA(8, max_frames=4)
    tokenizer, model = build.qa_model(SMALL, len(data.vocabulary))
    assert isinstance(model, HBIQA) and model.config.t_rate1 == 0.125
    batch = collate([data[i] for i in range(4)], tokenizer, SMALL["max_words"])
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["frame_mask"], batch["answer"])
    model.eval()  # no dropout: the same loss twice
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = float(model(*args)["loss"].detach())
    for _ in range(5):
        loss = model(*args)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(model(*args)["loss"].detach()) < first
    assert model.predict(*args[:4]).shape == (4, len(data.vocabulary))


def test_cli_train_and_eval_qa(tmp_path):
    import subprocess
    import sys

    args = [
        "--task",
        "qa",
        "--output",
        str(tmp_path / "qa"),
        "--num-train",
        "16",
        "--num-test",
        "8",
        "--batch-size",
        "8",
        "--max-steps",
        "2",
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
        "--quiet",
    ]

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "hbi_model.cli", *a], check=True, capture_output=True, text=True, timeout=600
        ).stdout

    assert "majority answer" in run("train", *args)
    assert "overall" in run("eval", *args)


def test_a_video_with_no_frame_gives_finite_answers_losses_and_gradients():
    data = SyntheticQA(8, max_frames=4)
    tokenizer, model = build.qa_model(SMALL, len(data.vocabulary))
    batch = collate([data[i] for i in range(4)], tokenizer, SMALL["max_words"])
    batch["frame_mask"][2] = False  # what an unreadable video loads as
    batch["pixel_values"][2] = 0
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["frame_mask"])
    parts = model(*args, batch["answer"])
    for name, value in parts.items():
        assert torch.isfinite(value), name
    parts["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), name
    assert torch.isfinite(model.predict(*args)).all()
    # Pooling no frame gives nothing: the empty video's pooled vector is 0.
    pool = model.answer_heads[0].video_pool
    pooled = pool(torch.randn(2, 4, pool.score[0].in_features), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]).bool())
    assert torch.isfinite(pooled).all() and (pooled[1] == 0).all() and (pooled[0] != 0).any()


MALFORMED_QA = [  # (file, content, what the error must say)
    ("test_qa.json", "", "test_qa.json is empty"),
    ("test_qa.json", '{"video_id": 7, "question": "what is it"}\n', "test_qa.json: record 0 has no key 'answer'"),
    ("test_qa.json", '[{"video_id": 7, "answer": "dog"}]', "test_qa.json: record 0 has no key 'question'"),
    ("test_qa.json", '{"video_id": 7, "question": "what', "test_qa.json, line 1, is not valid JSON"),
    ("train_ans2label.json", "", "train_ans2label.json is empty"),
    ("train_ans2label.json", '["man", "dog"]', "train_ans2label.json: the top level should be a dict, got list"),
    ("train_ans2label.json", '{"man": 0, "dog": 5}', "train_ans2label.json: .*ids 0 to 1.*'dog': 5"),
    ("train_ans2label.json", '{"man": 0, "dog": "1"}', "train_ans2label.json: .*ids 0 to 1.*'dog': '1'"),
]


@pytest.mark.parametrize("name, content, message", MALFORMED_QA)
def test_malformed_msrvtt_qa_files_are_named(tmp_path, name, content, message):
    (tmp_path / "train_ans2label.json").write_text(json.dumps({"man": 0, "dog": 1}))
    (tmp_path / "test_qa.json").write_text(json.dumps({"video_id": 7, "question": "what is it", "answer": "dog"}))
    (tmp_path / name).write_text(content)
    with pytest.raises(AnnotationError, match=message):
        vocabulary = AnswerVocabulary.from_file(tmp_path / "train_ans2label.json")
        MSRVTTQA(str(tmp_path), "test", vocabulary, max_frames=2, size=32)
