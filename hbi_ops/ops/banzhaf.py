"""banzhaf_interaction (docs/banzhaf.md): argument rules, fake, autograd and each backend's limits."""

import torch

from hbi_ops import _checks

NAME = "banzhaf_interaction"
MAX_EXACT_PLAYERS = 24  # definition="reference" enumerates 2^n coalitions
CUDA_CLOSED_FORM_MAX_PLAYERS = 512  # words (frames) a pair: csrc/banzhaf/closed_form_block.h kMaxPlayers
DEFINITIONS = ("textbook", "reference")
ESTIMATORS = ("exact", "paired", "msr")


def arguments(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
    """The public call's arguments, checked, as every backend takes them: (sim, text_mask, video_mask,
    text_weight, video_weight, definition, estimator, num_samples, seed), masks bool, floats promoted."""
    _checks.tensor("sim", sim, dim=3, floating=True)
    batch, num_words, num_frames = sim.shape
    _checks.same_device(
        "sim", sim, text_mask=text_mask, video_mask=video_mask, text_weight=text_weight, video_weight=video_weight
    )
    text_mask = _checks.mask("text_mask", text_mask, (batch, num_words), sim)
    video_mask = _checks.mask("video_mask", video_mask, (batch, num_frames), sim)
    text_weight = _checks.floating_or_default("text_weight", text_weight, (batch, num_words), sim, 0.0)
    video_weight = _checks.floating_or_default("video_weight", video_weight, (batch, num_frames), sim, 0.0)
    _checks.choice("definition", definition, DEFINITIONS)
    estimator_given = estimator is not None
    estimator = "exact" if estimator is None else estimator
    _checks.choice("estimator", estimator, ESTIMATORS)
    if estimator == "msr" and definition == "reference":
        raise ValueError(
            "estimator='msr' needs a coalition value, which definition='reference' does not "
            "have (its value1 is not one); use estimator='paired' or 'exact'"
        )
    num_samples = _checks.integer("num_samples", num_samples, low=1, high=2**31 - 1)
    seed = _checks.integer("seed", seed, low=0, high=2**64 - 1)
    if seed >= 2**63:  # the op schema carries a signed int64; the kernels read it back as uint64
        seed -= 2**64
    if estimator == "exact" and definition == "reference":
        check_exact_players(text_mask, video_mask, estimator_given)
    dtype = _checks.common_float_dtype(sim, text_weight, video_weight)
    return (
        sim.to(dtype),
        text_mask,
        video_mask,
        text_weight.to(dtype),
        video_weight.to(dtype),
        definition,
        estimator,
        num_samples,
        seed,
    )


def check_exact_players(text_mask, video_mask, estimator_given=True):
    """definition='reference' has no closed form: its exact estimator enumerates 2^n coalitions."""
    num_words, num_frames = text_mask.shape[1], video_mask.shape[1]
    if num_words + num_frames <= MAX_EXACT_PLAYERS or text_mask.shape[0] == 0:
        return  # no pair can exceed the limit: no need to read the masks
    if not _checks.readable(text_mask):
        return  # meta/fake tensors, torch.compile, torch.func: the kernels check the count themselves
    players = text_mask.sum(1) + video_mask.sum(1)
    worst = int(players.argmax())
    if int(players[worst]) > MAX_EXACT_PLAYERS:
        how = "estimator='exact'" if estimator_given else "the default estimator ('exact')"
        raise ValueError(
            f"definition='reference' has no closed form: {how} enumerates all 2^n coalitions and takes at "
            f"most {MAX_EXACT_PLAYERS} players per pair; pair {worst} has {int(players[worst])} "
            f"({int(text_mask[worst].sum())} words + {int(video_mask[worst].sum())} frames): pass "
            f"estimator='paired' (with num_samples and seed)"
        )


def not_supported_reasons(backend, args):
    sim, definition, estimator = args[0], args[5], args[6]
    closed_form = estimator == "exact" and definition == "textbook"
    if backend == "cuda" and closed_form and max(sim.shape[1:]) > CUDA_CLOSED_FORM_MAX_PLAYERS:
        return [
            f"the cuda closed form takes at most {CUDA_CLOSED_FORM_MAX_PLAYERS} words and frames a pair (one "
            f"block a pair holds them in shared memory), got T={sim.shape[1]}, V={sim.shape[2]}"
        ]
    return []


# Outputs are contiguous whatever the strides of sim: every backend computes on contiguous copies.
def fake(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
    return torch.empty_like(sim, memory_format=torch.contiguous_format)


def backward_fake(
    grad, sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
):
    return (
        torch.empty_like(sim, memory_format=torch.contiguous_format),
        torch.empty_like(text_weight, memory_format=torch.contiguous_format),
        torch.empty_like(video_weight, memory_format=torch.contiguous_format),
    )


def save(ctx, inputs, output):
    sim, text_mask, video_mask, text_weight, video_weight = inputs[:5]
    ctx.save_for_backward(sim, text_mask, video_mask, text_weight, video_weight)
    ctx.settings = inputs[5:]  # definition, estimator, num_samples, seed: the backward redraws the coalitions


def backward(backward_op, ctx, grad):
    sim, text_mask, video_mask, text_weight, video_weight = ctx.saved_tensors
    grad_sim, grad_text_weight, grad_video_weight = backward_op(
        grad.contiguous(), sim, text_mask, video_mask, text_weight, video_weight, *ctx.settings
    )
    return grad_sim, None, None, grad_text_weight, grad_video_weight, None, None, None, None
