"""Helpers for testing and benchmarking hbi_ops and code built on it (importable from an install): random
inputs, tolerances, the backends of a device, and sample_inputs, one generator of named calls per operator
(extension-cpp's sample_inputs): ordinary masked inputs and the hard ones real models produce (weight logits
far apart, ties, NaN or inf at padded positions, one real token, an all-padding row), never all zeros.
tests/ops/test_operators.py feeds them to every backend on every device: against the oracle, gradcheck and
opcheck."""

import dataclasses

import torch
import torch.nn.functional as F

# Tolerances for comparing a backend with the float64-accurate oracle, by the dtype of the inputs.
TOLERANCE = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def padded_mask(rows, length, *, real=None, empty_row=None, device="cpu"):
    """[rows, length] bool mask, padding at the end: `real` real tokens in every row, else a random count in
    1..length a row; row `empty_row` (when given and present) all padding."""
    lengths = torch.full((rows,), real) if real is not None else torch.randint(1, length + 1, (rows,))
    if empty_row is not None and rows > empty_row:
        lengths[empty_row] = 0
    return (torch.arange(length)[None, :] < lengths[:, None]).to(device)


def random_game(batch, num_words, num_frames, dtype=torch.float64, *, masked=True, real_words=None, device="cpu"):
    """Random banzhaf_interaction inputs (sim, text_mask, video_mask, text_weight, video_weight): padded masks
    with at least one real token a row (masked), or `real_words` real words and every frame real, or no
    padding at all."""
    sim = torch.randn(batch, num_words, num_frames, dtype=dtype)
    text_weight = torch.randn(batch, num_words, dtype=dtype)
    video_weight = torch.randn(batch, num_frames, dtype=dtype)
    if real_words is not None or not masked:
        text_mask = padded_mask(batch, num_words, real=num_words if real_words is None else real_words)
        video_mask = padded_mask(batch, num_frames, real=num_frames)
    else:
        text_mask, video_mask = padded_mask(batch, num_words), padded_mask(batch, num_frames)
    return tuple(t.to(device) for t in (sim, text_mask, video_mask, text_weight, video_weight))


def compiled_cpu_backends(op):
    """Backends other than the oracle that run `op` on CPU tensors in this session: cpu always (a missing
    extension is a failure, not a skip), triton where it has a kernel for `op`, run by the interpreter
    (tests/conftest.py sets TRITON_INTERPRET=1 on machines without a GPU)."""
    from hbi_ops import _dispatch

    names = ["cpu"]
    if _dispatch.why_not("triton", op, torch.device("cpu")) is None:
        names.append("triton")
    return names


def backends_for(op, device):
    """Backends able to run `op` on `device` here, the oracle included (the baseline)."""
    from hbi_ops import _dispatch

    return [b for b in _dispatch.BACKENDS if _dispatch.why_not(b, op, torch.device(device)) is None]


def bench_device():
    """Where benchmarks run: the GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# --- sample_inputs --------------------------------------------------------------------------------------

BANZHAF_SETTINGS = [
    ("textbook", "exact"),
    ("textbook", "paired"),
    ("textbook", "msr"),
    ("reference", "exact"),
    ("reference", "paired"),
]
POISON = float("nan")


@dataclasses.dataclass
class SampleInput:
    """One call of a public operator: op(*args, **kwargs). `differentiable` names the positions in args the
    gradients are taken in; `compare_grads` whether they are defined and comparable with the oracle (not
    where NaN or inf sits at padding: the oracle's own autograd is meaningless there);
    `gradcheck` whether finite differences apply (not at ties of a maximum); `quick` whether it is in the set
    that opcheck and gradcheck run under Triton's CPU interpreter, where a banzhaf_interaction call costs a
    second (the other operators' samples are all quick)."""

    name: str
    args: tuple
    kwargs: dict
    differentiable: tuple = ()
    compare_grads: bool = True
    gradcheck: bool = True
    quick: bool = True

    def to(self, device=None, dtype=None):
        """The same call with its tensors on `device`, the floating ones in `dtype` (masks and indices keep
        their dtypes)."""

        def move(value):
            if not isinstance(value, torch.Tensor):
                return value
            return value.detach().to(device=device, dtype=dtype if value.is_floating_point() else None)

        kwargs = {name: move(value) for name, value in self.kwargs.items()}
        return dataclasses.replace(self, args=tuple(move(a) for a in self.args), kwargs=kwargs)

    def with_grad(self):
        """Fresh leaves at the differentiable positions."""
        args = list(self.args)
        for i in self.differentiable:
            if args[i] is not None:
                args[i] = args[i].detach().clone().requires_grad_(True)
        return dataclasses.replace(self, args=tuple(args))

    def leaves(self):
        return [self.args[i] for i in self.differentiable if self.args[i] is not None]


def sample_inputs(op, device, dtype, requires_grad=False):
    """Named SampleInputs of public operator `op` with floating tensors in `dtype` on `device` (sizes
    small on CPU, where Triton runs in its interpreter; the usual GPU test sizes on CUDA)."""
    samples = _GENERATORS[op](str(device).startswith("cuda"), dtype)
    samples = [s.to(device, dtype) for s in samples]
    return [s.with_grad() for s in samples] if requires_grad else samples


# --- wti_similarity ---------------------------------------------------------------------------------------


def wti_inputs(
    num_texts, num_videos, num_words, num_frames, width, dtype=torch.float64, *, empty_rows=True, device="cpu"
):
    """Random wti_similarity inputs [x, y, p, q, mt, mv]: L2-normalised features, softmax weights (what callers
    pass), padded masks; with empty_rows, text 1 and video 2 (where present) all padding."""
    x = F.normalize(torch.randn(num_texts, num_words, width, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(num_videos, num_frames, width, dtype=torch.float64), dim=-1)
    p = torch.softmax(torch.randn(num_texts, num_words, dtype=torch.float64), dim=-1)
    q = torch.softmax(torch.randn(num_videos, num_frames, dtype=torch.float64), dim=-1)
    mt = padded_mask(num_texts, num_words, empty_row=1 if empty_rows else None, device=device)
    mv = padded_mask(num_videos, num_frames, empty_row=2 if empty_rows else None, device=device)
    return [t.to(device=device, dtype=dtype) for t in (x, y, p, q)] + [mt, mv]


def _wti_samples(on_gpu, dtype):
    size = (17, 19, 32, 12, 64) if on_gpu else (5, 6, 7, 5, 32)
    samples = []
    for padding in ("ignore", "zero"):
        args = wti_inputs(*size)
        # gradcheck's Jacobian of the GPU size would take minutes: the small samples below have it
        flags = dict(gradcheck=not on_gpu)
        samples.append(SampleInput(f"masked-{padding}", args, dict(padding=padding), (0, 1, 2, 3), **flags))
    x, y, p, q, mt, mv = wti_inputs(3, 3, 4, 3, 5)
    samples.append(SampleInput("small", (x, y, p, q, mt, mv), dict(padding="ignore"), (0, 1, 2, 3)))
    samples.append(SampleInput("small-zero", (x, y, p, q, mt, mv), dict(padding="zero"), (0, 1, 2, 3)))
    x, y, p, q, mt, mv = wti_inputs(3, 4, 5, 4, 8, empty_rows=False)
    mt, mv = padded_mask(3, 5, real=1), padded_mask(4, 4, real=1)
    samples.append(SampleInput("one-real-token", (x, y, p, q, mt.int(), mv.long()), {}, (0, 1, 2, 3)))
    x, y, p, q, mt, mv = wti_inputs(3, 4, 5, 4, 8)
    # NaN / inf features and weights at padded tokens: replaced before any backend runs, so they never matter.
    x, y = x.masked_fill(~mt[..., None], POISON), y.masked_fill(~mv[..., None], float("inf"))
    p, q = p.masked_fill(~mt, float("-inf")), q.masked_fill(~mv, POISON)
    samples.append(SampleInput("nonfinite-padding", (x, y, p, q, mt, mv), dict(padding="zero"), (0, 1, 2, 3)))
    # Small-integer features: exact ties of the maxima in every dtype (the tie rule picks the first index).
    x = torch.randint(-2, 3, (3, 5, 4)).double() + 0.5
    y = torch.randint(-2, 3, (4, 4, 4)).double() + 0.5
    p, q = torch.rand(3, 5, dtype=torch.float64) + 0.1, torch.rand(4, 4, dtype=torch.float64) + 0.1
    samples.append(SampleInput("ties", (x, y, p, q, *wti_inputs(3, 4, 5, 4, 1)[4:]), {}, (0, 1, 2, 3), gradcheck=False))
    return samples


# --- banzhaf_interaction ----------------------------------------------------------------------------------


def _banzhaf_samples(on_gpu, dtype):
    kwargs = [dict(definition=d, estimator=e, num_samples=6, seed=2024) for d, e in BANZHAF_SETTINGS]
    sizes = [(4, 5, 4), (3, 7, 6)] if on_gpu else [(2, 3, 2)]
    samples = []

    def add(kind, game, settings, **flags):
        # Every setting on a GPU; on CPU, where Triton is interpreted, the hard kinds take one setting each.
        for kw in kwargs if on_gpu else [kwargs[settings]]:
            name = f"{kind}-{kw['definition']}-{kw['estimator']}"
            samples.append(SampleInput(name, tuple(game), kw, (0, 3, 4), quick=False, **flags))

    for size in sizes:
        for kw in kwargs:
            sim, text_mask, video_mask, text_weight, video_weight = random_game(*size)
            text_mask = text_mask.int()  # integer masks are accepted
            name = "masked-{definition}-{estimator}-".format(**kw) + "x".join(map(str, size))
            samples.append(SampleInput(name, (sim, text_mask, video_mask, text_weight, video_weight), kw, (0, 3, 4)))
    sim, text_mask, video_mask, text_weight, video_weight = game = random_game(3, 3, 2)
    text_mask[1] = False  # a pair with no real word
    video_mask[2] = False  # and one with no real frame
    add("all-padding-rows", game, 2)
    # One dominant word, one negligible frame, a text spread over +-gap (a gap of 17 once gave NaN).
    sim, text_mask, video_mask, text_weight, video_weight = game = random_game(2, 3, 2, masked=False)
    text_weight[:, 0] += 50.0
    video_weight[:, -1] -= 50.0
    text_weight[1] = torch.linspace(-50.0, 50.0, 3)
    add("logits-far-apart", game, 1)
    add("one-real-word", random_game(2, 3, 2, real_words=1), 4)
    sim, text_mask, video_mask, text_weight, video_weight = random_game(2, 3, 2)
    sim = (sim * 2).round() + 0.5  # ties: which maximum takes the gradient is not specified, the output is
    add("ties", (sim, text_mask, video_mask, text_weight, video_weight), 0, compare_grads=False, gradcheck=False)
    poisoned = (
        sim.masked_fill(~(text_mask[:, :, None] & video_mask[:, None, :]), POISON),
        text_mask,
        video_mask,
        text_weight.masked_fill(~text_mask, float("inf")),
        video_weight.masked_fill(~video_mask, float("-inf")),
    )
    add("nonfinite-padding", poisoned, 3, compare_grads=False, gradcheck=False)
    return samples


# --- dpc_knn ----------------------------------------------------------------------------------------------


def random_mask(batch, n, *, empty_sample=True, single_sample=True):
    """Random real/padded pattern (not only trailing padding), with a sample of 0 and one of 1 real token."""
    mask = torch.rand(batch, n) < 0.75
    if empty_sample and batch > 0:
        mask[0] = False
    if single_sample and batch > 1:
        mask[1] = False
        mask[1, torch.randint(n, ()).item()] = True
    return mask


def grid_data(shape, dtype=torch.float64):
    """Small integers (from torch.randn): every squared distance is exact in float16 to float64, so every
    backend computes bit-identical distances and the many exact ties exercise the tie rules."""
    return torch.randn(shape).mul(2).round().clamp(-6, 6).to(dtype)


def _dpc_samples(on_gpu, dtype):
    batch, width = 3, 5
    samples = []
    for n in (10, 100) if on_gpu else (10,):  # both paths of the cuda kernel: fused N <= 64, tiled N > 64
        grid, every = grid_data((batch, n, width)), grid_data((batch, n, width))
        samples.append(SampleInput(f"grid-ties-{n}", (grid, 4), dict(k=3, mask=random_mask(batch, n))))
        samples.append(SampleInput(f"every-token-a-centre-{n}", (every, n), dict(k=n, mask=random_mask(batch, n))))
    n = 100 if on_gpu else 10
    # Well-separated groups: near-ties far beyond float rounding.
    groups = torch.randn(batch, 4, 8, dtype=torch.float64) * 8
    x = groups.repeat_interleave(3, dim=1) + 0.1 * torch.randn(batch, 12, 8, dtype=torch.float64)
    samples.append(SampleInput("well-separated", (x, 4), dict(k=2, mask=random_mask(batch, 12))))
    if dtype == torch.float64:  # continuous data: near-ties only float64 reproduces exactly
        x = torch.randn(batch, n, width, dtype=torch.float64)
        samples.append(SampleInput("random", (x, 4), dict(k=3, mask=random_mask(batch, n))))
    x, mask = grid_data((batch, n, width)), random_mask(batch, n)
    x[~mask] = POISON
    x[0, 0] = float("inf")  # sample 0 is all padding
    samples.append(SampleInput("nonfinite-padding", (x, 3), dict(k=2, mask=mask)))
    return samples


# --- merge_tokens -----------------------------------------------------------------------------------------


def _merge_samples(on_gpu, dtype):
    batch, n, width, num_clusters = 3, 11, 6, 4
    x = torch.randn(batch, n, width, dtype=torch.float64)
    idx = torch.randint(0, num_clusters, (batch, n))
    idx[:, -1] = num_clusters - 1
    weight = torch.rand(batch, n, dtype=torch.float64) + 0.1
    samples = [
        SampleInput("weighted", (x, idx, num_clusters, weight), {}, (0, 3)),
        SampleInput("weight-none", (x, idx, num_clusters), {}, (0,)),
        SampleInput("empty-clusters", (x, idx, num_clusters + 3, weight), {}, (0, 3)),
        SampleInput("int32-idx", (x, idx.int(), num_clusters, weight), {}, (0, 3)),
    ]
    # Importance weights exp(score) spread over a few orders of magnitude, as a model gives them.
    spread = torch.randn(batch, n, dtype=torch.float64).mul(3).exp()
    samples.append(SampleInput("weights-far-apart", (x, idx, num_clusters, spread), {}, (0, 3)))
    # Several blocks of tokens and channels (its gradcheck would take minutes).
    x, idx = torch.randn(4, 30, 24, dtype=torch.float64), torch.randint(0, 7, (4, 30))
    samples.append(SampleInput("weighted-4x30x24", (x, idx, 7, torch.rand(4, 30) + 0.1), {}, (0, 3), gradcheck=False))
    x, idx = torch.randn(1, 6, 2, dtype=torch.float64), torch.randint(0, 4, (1, 6))
    idx[:, -1] = 3
    tiny = torch.rand(1, 6, dtype=torch.float64) + 0.1
    samples.append(SampleInput("weighted-1x6x2", (x, idx, 4, tiny), {}, (0, 3)))  # small enough for a full
    samples.append(SampleInput("weight-none-1x6x2", (x, idx, 4), {}, (0,)))  # gradcheck under the interpreter
    one = torch.randn(batch, 1, width, dtype=torch.float64)
    samples.append(
        SampleInput("one-token", (one, torch.zeros(batch, 1, dtype=torch.int64), 2, weight[:, :1]), {}, (0, 3))
    )
    return samples


_GENERATORS = {
    "wti_similarity": _wti_samples,
    "banzhaf_interaction": _banzhaf_samples,
    "dpc_knn": _dpc_samples,
    "merge_tokens": _merge_samples,
}
