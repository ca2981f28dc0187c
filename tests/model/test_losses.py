"""The losses against hand-computed values: the Banzhaf KL's two reductions and two transposes with a
padding mask, the authors' F.kl_div form, InfoNCE and the cross-level KL; the model's Banzhaf loss zeroes
padded cells before the student and divides the teacher's index by the temperature."""

import math

import pytest
import torch
import torch.nn.functional as F

import hbi_ops
from hbi_model.encoders import CLIPEncoders, tiny_clip_config
from hbi_model.losses import banzhaf_kl, info_nce, level_kl, masked_kl
from hbi_model.retrieval import HBIConfig, HBIRetrieval

LN3 = math.log(3)


def kl2(p0, q0):
    """KL((p0, 1 - p0) || (q0, 1 - q0))."""
    return p0 * math.log(p0 / q0) + (1 - p0) * math.log((1 - p0) / (1 - q0))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# Two pairs of 2 words x 2 frames; pair 1's second frame is padding. Values at padded cells are junk.
TEACHER = torch.tensor([[[0.0, LN3], [LN3, 0.0]], [[0.0, 5.0], [LN3, 7.0]]])
STUDENT = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[1.0, -9.0], [2.0, 100.0]]])
VALID = torch.tensor([[[True, True], [True, True]], [[True, False], [True, False]]])
K1 = kl2(0.25, 0.5)  # a row (0, ln 3) against a flat student: p = (1/4, 3/4), q = (1/2, 1/2)
K2 = kl2(0.25, sigmoid(-1.0))  # pair 1, frame 0 over words: p = (1/4, 3/4), student (1, 2)
K3 = kl2(0.5, sigmoid(-1.0))  # cell (0, 0) over the pairs: teacher (0, 0), student (0, 1)
K4 = kl2(0.5, sigmoid(-2.0))  # cell (1, 0) over the pairs: teacher (ln 3, ln 3), student (0, 2)


def test_row_reduction_by_hand():
    # over frames: pair 0's two rows give K1 each, pair 1's rows have one real cell (KL 0): 4 rows
    # over words: pair 0's two columns give K1 each, pair 1's real column K2: 3 rows
    expected = 2 * K1 / 4 + (2 * K1 + K2) / 3
    assert banzhaf_kl(TEACHER, STUDENT, VALID, "row", "words").item() == pytest.approx(expected, rel=1e-6)


def test_element_reduction_by_hand():
    # the same terms, each averaged over the real cells (6) instead of the rows: V times lighter
    expected = 2 * K1 / 6 + (2 * K1 + K2) / 6
    assert banzhaf_kl(TEACHER, STUDENT, VALID, "element", "words").item() == pytest.approx(expected, rel=1e-6)


def test_reference_transpose_by_hand():
    # second term over the pairs of the batch, per cell (t, v): (0, 0) gives K3, (1, 0) gives K4, the
    # cells of frame 1 have one real pair (KL 0); 4 rows, 6 real cells
    first_row, first_element = 2 * K1 / 4, 2 * K1 / 6
    assert banzhaf_kl(TEACHER, STUDENT, VALID, "row", "reference").item() == pytest.approx(
        first_row + (K3 + K4) / 4, rel=1e-6
    )
    assert banzhaf_kl(TEACHER, STUDENT, VALID, "element", "reference").item() == pytest.approx(
        first_element + (K3 + K4) / 6, rel=1e-6
    )


def test_padded_cells_take_no_part():
    junk_teacher, junk_student = TEACHER.clone(), STUDENT.clone()
    junk_teacher[~VALID] = torch.randn(int((~VALID).sum())) * 50
    junk_student[~VALID] = torch.randn(int((~VALID).sum())) * 50
    for reduction in ("row", "element"):
        for transpose in ("words", "reference"):
            torch.testing.assert_close(
                banzhaf_kl(junk_teacher, junk_student, VALID, reduction, transpose),
                banzhaf_kl(TEACHER, STUDENT, VALID, reduction, transpose),
            )
    assert banzhaf_kl(TEACHER, TEACHER, VALID).abs() < 1e-6
    nothing = torch.zeros_like(VALID)
    assert banzhaf_kl(TEACHER, STUDENT, nothing).item() == 0.0


@pytest.mark.filterwarnings("ignore:reduction")  # the authors' reduction="mean", on purpose
def test_element_and_reference_are_the_authors_expression_without_padding():
    teacher, student = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    valid = torch.ones(3, 4, 5, dtype=torch.bool)

    def kl(x, y):  # the authors' KL module: F.kl_div(log_softmax(x), softmax(y), reduction="mean")
        return F.kl_div(F.log_softmax(x, -1), F.softmax(y, -1), reduction="mean")

    # their s_loss = kl(banzhaf, teacher) + kl(banzhaf.T, teacher.T); .T of a 3-D tensor reverses its axes
    expected = kl(student, teacher) + kl(student.permute(2, 1, 0), teacher.permute(2, 1, 0))
    torch.testing.assert_close(banzhaf_kl(teacher, student, valid, "element", "reference"), expected)
    # and the row reduction is the per-row sum, V (or T) times heavier
    rows = F.kl_div(F.log_softmax(student, -1), F.softmax(teacher, -1), reduction="none").sum(-1).mean()
    torch.testing.assert_close(masked_kl(teacher, student, valid, "row"), rows)
    torch.testing.assert_close(
        masked_kl(teacher, student, valid, "row"), 5 * masked_kl(teacher, student, valid, "element")
    )


def test_bad_choices_are_named():
    with pytest.raises(ValueError, match="reduction"):
        banzhaf_kl(TEACHER, STUDENT, VALID, reduction="sum")
    with pytest.raises(ValueError, match="transpose"):
        banzhaf_kl(TEACHER, STUDENT, VALID, transpose="batch")
    with pytest.raises(ValueError, match="teacher_temperature"):
        HBIConfig(teacher_temperature=0.0)
    with pytest.raises(ValueError, match="banzhaf_reduction"):
        HBIConfig(banzhaf_reduction="sum")


def test_info_nce_and_level_kl_by_hand():
    sim = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # each row and column: -log(e^s / (e^s + 1)) at scale s = 2
    assert info_nce(sim, 2.0).item() == pytest.approx(-math.log(sigmoid(2.0)), rel=1e-6)
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, LN3]])
    # KL(softmax(y) || softmax(x)) = KL((1/4, 3/4) || (1/2, 1/2)), averaged over the 2 elements
    assert level_kl(x, y).item() == pytest.approx(K1 / 2, rel=1e-6)


def _model(**config):
    encoders = CLIPEncoders.from_config(tiny_clip_config(vocab_size=20, width=16, projection_dim=16, max_words=6))
    return HBIRetrieval(
        encoders, HBIConfig(max_words=6, max_frames=4, temporal_layers=1, temporal_heads=2, attention_heads=2, **config)
    )


def test_padded_cells_are_zero_before_the_student():
    torch.manual_seed(0)
    model = _model()
    seen = []
    model.students[0].register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    tn, vn = F.normalize(torch.randn(2, 6, 16), dim=-1), F.normalize(torch.randn(2, 4, 16), dim=-1)
    text_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    video_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    wt, wv = (
        torch.randn(2, 6).masked_fill(~text_mask, float("-inf")),
        torch.randn(2, 4).masked_fill(~video_mask, float("-inf")),
    )
    loss = model.banzhaf_loss("entity", text_mask, video_mask, tn, vn, wt, wv)
    valid = text_mask[:, :, None] & video_mask[:, None, :]
    assert (seen[0][~valid] == 0).all()
    torch.testing.assert_close(seen[0][valid], torch.einsum("btd,bvd->btv", tn, vn)[valid])
    # junk features at padded tokens change nothing
    tn2, vn2 = tn.clone(), vn.clone()
    tn2[0, 4:], vn2[0, 3] = torch.randn(2, 16), torch.randn(16)
    torch.testing.assert_close(model.banzhaf_loss("entity", text_mask, video_mask, tn2, vn2, wt, wv), loss)


def test_teacher_is_the_exact_index_over_the_temperature():
    torch.manual_seed(1)
    sim = torch.rand(3, 5, 4) * 2 - 1
    text_mask, video_mask = torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)
    text_mask[1, 3:] = False
    wt, wv = torch.randn(3, 5), torch.randn(3, 4)
    index = hbi_ops.banzhaf_interaction(sim, text_mask, video_mask, wt.masked_fill(~text_mask, 0), wv)
    for temperature in (1.0, 1e-3):
        model = _model(teacher_temperature=temperature)
        torch.testing.assert_close(model.teacher_logits(sim, text_mask, video_mask, wt, wv), index / temperature)
    # a pretrained estimator network predicts 1000 x the index: at temperature 1e-3 its outputs are the logits
    model = _model(teacher_temperature=1e-3)
    model.load_teacher(model.students[0].state_dict())
    torch.testing.assert_close(model.teacher_logits(sim, text_mask, video_mask, wt, wv), model.students[0](sim))
