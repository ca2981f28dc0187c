"""hbi_ops.dpc_knn (docs/dpc_knn.md): a hand-checked example on every backend, the oracle against scalar loops,
every compiled CPU backend against the oracle (identical idx and centres), per-sample independence,
properties, layouts and argument errors (opcheck on the shared samples: test_operators.py)."""

import math

import pytest
import torch

import hbi_ops
from hbi_ops.reference.dpc_knn import dpc_knn as oracle
from hbi_ops.testing import FLOAT_DTYPES, compiled_cpu_backends, grid_data, random_mask

ALL_BACKENDS = ["torch"] + compiled_cpu_backends("dpc_knn")


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def brute_force(x, mask, num_clusters, k):
    """Scalar loops over the steps of docs/dpc_knn.md in float64, independent of the oracle's tensor code."""
    batch, n, width = x.shape
    idx = torch.zeros(batch, n, dtype=torch.int64)
    centers = torch.zeros(batch, num_clusters, dtype=torch.int64)
    for b in range(batch):
        p = x[b].double().tolist()
        real = [bool(v) for v in mask[b]]
        dist = [
            [math.sqrt(sum((p[i][c] - p[j][c]) ** 2 for c in range(width))) / math.sqrt(width) for j in range(n)]
            for i in range(n)
        ]
        real_pairs = [dist[i][j] for i in range(n) for j in range(n) if real[i] and real[j]]
        largest_real = max(real_pairs) if real_pairs else 0.0
        for i in range(n):
            for j in range(n):
                if not real[j]:
                    dist[i][j] = largest_real + 1
        rho = [math.exp(-sum(d * d for d in sorted(dist[i])[:k]) / k) if real[i] else 0.0 for i in range(n)]

        def denser(j, i):
            if real[j] != real[i]:
                return real[j]
            return rho[j] > rho[i] or (rho[j] == rho[i] and j < i)

        largest = max(max(row) for row in dist)
        delta = [min([dist[i][j] for j in range(n) if denser(j, i)], default=largest) for i in range(n)]
        score = [delta[i] * rho[i] for i in range(n)]
        chosen = sorted(range(n), key=lambda i: (-score[i], i))[:num_clusters]
        for i in range(n):
            idx[b, i] = min(range(num_clusters), key=lambda c: (dist[chosen[c]][i], c))
        for c, i in enumerate(chosen):
            idx[b, i] = c
            centers[b, c] = i
    return idx, centers


def assert_same(result, expected):
    idx, centers = result
    expected_idx, expected_centers = expected
    assert idx.dtype == torch.int64 and centers.dtype == torch.int64
    torch.testing.assert_close(centers, expected_centers, rtol=0, atol=0)
    torch.testing.assert_close(idx, expected_idx, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------
# a hand-checked example
# ------------------------------------------------------------------------------------------------------------

# Three samples of N = 5 one-dimensional tokens (C = 1, so Dist = |x_i - x_j|), K = 3, k = 2; rho is
# exp(-(0 + d^2) / 2) with d the distance to the nearest other token (columns).
#
# Sample 0: x = [0, 1, 3, 10, 11], no padding.
#   nearest-neighbour distances 1, 1, 2, 1, 1 -> rho = e^-0.5 for tokens 0, 1, 3, 4 and e^-2 for token 2.
#   density order (ties by index): 0, 1, 3, 4, 2.
#   delta: token 0 (densest) = largest entry 11; token 1 = Dist[1, 0] = 1; token 3 = min(10, 9) = 9;
#          token 4 = min(11, 10, 1) = 1; token 2 = min(3, 2, 7, 8) = 2.
#   score = delta * rho: 11 r, r, 2 e^-2 (0.27), 9 r, r (r = e^-0.5 = 0.61): centres 0, 3, then 1 (ties
#   with 4, lower index first). Token 2: Dist to centres (0, 3, 1) = (3, 7, 2) -> cluster 2; token 4:
#   (11, 1, 10) -> cluster 1.  idx = [0, 2, 2, 1, 1], centres = [0, 3, 1].
#
# Sample 1: x = [0, 4, 5, 100, -50], tokens 3 and 4 padded.
#   M = largest real distance = 5 (this sample's, not the batch's 11): padded columns become 6.
#   rho: token 0 = e^-(16/2) = e^-8, tokens 1 and 2 = e^-0.5, padded 0. Order: 1, 2, 0, 3, 4.
#   delta: token 1 = largest entry of the masked matrix = Dist[3, 0] = 100 (a padded ROW keeps its real
#   distances); token 2 = Dist[2, 1] = 1; token 0 = min(4, 5) = 4; padded tokens: scores 0.
#   score: 100 r, r, 4 e^-8 (0.0013), 0, 0: centres 1, 2, 0. Padded tokens are at 6 from every centre:
#   cluster 0.  idx = [2, 0, 1, 0, 0], centres = [1, 2, 0].
#
# Sample 2: x = [0, 1, 10, 11, 5.5], no padding.
#   rho = r for tokens 0..3, e^-(4.5^2 / 2) for token 4. Order 0, 1, 2, 3, 4.
#   delta: 11, 1, min(10, 9) = 9, min(11, 10, 1) = 1, 4.5. Scores 11 r, r, 9 r, r, ~2e-4: centres 0, 2,
#   then 1 (ties with 3). Token 3: (11, 1, 10) -> cluster 1. Token 4 = 5.5: (5.5, 4.5, 4.5) -> a tie
#   between clusters 1 and 2, the lower wins: cluster 1.  idx = [0, 2, 1, 1, 1], centres = [0, 2, 1].
HAND_X = [[0, 1, 3, 10, 11], [0, 4, 5, 100, -50], [0, 1, 10, 11, 5.5]]
HAND_MASK = [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
HAND_IDX = [[0, 2, 2, 1, 1], [2, 0, 1, 0, 0], [0, 2, 1, 1, 1]]
HAND_CENTERS = [[0, 3, 1], [1, 2, 0], [0, 2, 1]]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_hand_checked_example(backend, dtype):
    x = torch.tensor(HAND_X, dtype=dtype)[:, :, None]
    mask = torch.tensor(HAND_MASK, dtype=torch.bool)
    result = hbi_ops.dpc_knn(x, 3, k=2, mask=mask, backend=backend)
    assert_same(result, (torch.tensor(HAND_IDX), torch.tensor(HAND_CENTERS)))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_padding_in_front_is_below_every_real_token(backend):
    # Padded tokens 0 and 1 (rho 0) can never be denser than the real ones, nor centres while real ones
    # with a positive score remain: x = [pad, pad, 0, 1, 3], k = 2. Real tokens as in sample 0 above.
    x = torch.tensor([[-7.0, 40.0, 0.0, 1.0, 3.0]])[:, :, None]
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    idx, centers = hbi_ops.dpc_knn(x, 3, k=2, mask=mask, backend=backend)
    # rho: tokens 2, 3 = e^-0.5, token 4 = e^-2. Order 2, 3, 4, 0, 1. Scores: token 2 = largest entry
    # (Dist[1, 2] = 40) * r, token 3 = 1 * r, token 4 = 2 e^-2; padded 0: centres 2, 3, 4.
    assert centers.tolist() == [[2, 3, 4]]
    assert idx.tolist() == [[0, 0, 0, 1, 2]]


# ------------------------------------------------------------------------------------------------------------
# the oracle against scalar loops; compiled backends against the oracle
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,n,width,num_clusters,k", [(3, 7, 4, 3, 2), (4, 9, 1, 9, 9), (3, 6, 5, 1, 1)])
def test_oracle_matches_brute_force(batch, n, width, num_clusters, k):
    x = torch.randn(batch, n, width, dtype=torch.float64)
    mask = random_mask(batch, n)
    assert_same(oracle(x, mask, num_clusters, k), brute_force(x, mask, num_clusters, k))


def test_oracle_matches_brute_force_with_ties():
    x = grid_data((4, 10, 2), torch.float64)
    mask = random_mask(4, 10)
    assert_same(oracle(x, mask, 4, 3), brute_force(x, mask, 4, 3))


SHAPES = [  # batch, n, width, num_clusters, k
    (5, 12, 16, 6, 3),
    (4, 32, 64, 16, 3),
    (3, 1, 8, 1, 1),
    (6, 20, 3, 20, 20),
    (2, 150, 12, 40, 5),
    (3, 60, 5, 10, 25),  # k above the insertion limit of the cpu kernel (nth_element)
]


def _sized(backend, shape):
    # The triton interpreter pays per program (one per row on the tiled path, N > 64): a smaller tiled case.
    return (2, 80, 12, 20, 5) if backend == "triton" and shape[1] > 100 else shape


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", compiled_cpu_backends("dpc_knn"))
def test_matches_oracle_float64(backend, shape):
    batch, n, width, num_clusters, k = _sized(backend, shape)
    x = torch.randn(batch, n, width, dtype=torch.float64)
    mask = random_mask(batch, n)
    expected = oracle(x, mask, num_clusters, k)
    assert_same(hbi_ops.dpc_knn(x, num_clusters, k=k, mask=mask, backend=backend), expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", compiled_cpu_backends("dpc_knn"))
def test_matches_oracle_on_grid_data(backend, shape, dtype):
    batch, n, width, num_clusters, k = _sized(backend, shape)
    x = grid_data((batch, n, width), dtype)
    mask = random_mask(batch, n)
    expected = oracle(x, mask, num_clusters, k)
    assert_same(hbi_ops.dpc_knn(x, num_clusters, k=k, mask=mask, backend=backend), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("backend", compiled_cpu_backends("dpc_knn"))
def test_matches_oracle_well_separated(backend, dtype):
    # Continuous data in well-separated groups: near-ties are far beyond float rounding.
    batch, n, width = 4, 24, 32
    groups = torch.randn(batch, 6, width) * 8
    x = groups[:, torch.arange(n) % 6] + torch.randn(batch, n, width) * torch.linspace(0.5, 2, n)[:, None]
    x = x.to(dtype)
    mask = random_mask(batch, n)
    expected = oracle(x, mask, 6, 3)
    assert_same(hbi_ops.dpc_knn(x, 6, k=3, mask=mask, backend=backend), expected)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_integer_mask_equals_bool_mask_and_no_mask_equals_all_real(backend):
    x = torch.randn(3, 10, 6, dtype=torch.float64)
    mask = random_mask(3, 10)
    by_bool = hbi_ops.dpc_knn(x, 4, k=3, mask=mask, backend=backend)
    assert_same(hbi_ops.dpc_knn(x, 4, k=3, mask=mask.to(torch.int64) * 3, backend=backend), by_bool)
    assert_same(hbi_ops.dpc_knn(x, 4, k=3, mask=mask.to(torch.int32), backend=backend), by_bool)
    assert_same(
        hbi_ops.dpc_knn(x, 4, k=3, backend=backend),
        hbi_ops.dpc_knn(x, 4, k=3, mask=torch.ones(3, 10, dtype=torch.bool), backend=backend),
    )


# ------------------------------------------------------------------------------------------------------------
# per-sample independence and properties
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_samples_are_independent(backend):
    n, width, num_clusters, k = 16, 8, 5, 3
    x = torch.randn(2, n, width, dtype=torch.float64)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[0, 11:] = False  # 11 real tokens (>= K), padding at the end
    alone = hbi_ops.dpc_knn(x[:1], num_clusters, k=k, mask=mask[:1], backend=backend)
    together = hbi_ops.dpc_knn(x, num_clusters, k=k, mask=mask, backend=backend)
    assert_same((together[0][:1], together[1][:1]), alone)

    # Another sample far bigger (which changed the batch-wide maximum of the reference), and the values
    # of the padded tokens of sample 0, change nothing in sample 0.
    changed = x.clone()
    changed[1] = torch.randn(n, width, dtype=torch.float64) * 100
    changed[0, 11:] = torch.randn(n - 11, width, dtype=torch.float64) * 50
    after = hbi_ops.dpc_knn(changed, num_clusters, k=k, mask=mask, backend=backend)
    assert_same((after[0][:1], after[1][:1]), alone)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_properties(backend):
    batch, n, num_clusters = 6, 40, 9
    x = torch.randn(batch, n, 7)
    idx, centers = hbi_ops.dpc_knn(x, num_clusters, k=4, mask=random_mask(batch, n), backend=backend)
    assert idx.shape == (batch, n) and centers.shape == (batch, num_clusters)
    assert int(idx.min()) >= 0 and int(idx.max()) < num_clusters
    assert int(centers.min()) >= 0 and int(centers.max()) < n
    for b in range(batch):
        assert len(set(centers[b].tolist())) == num_clusters
    assert torch.equal(idx.gather(1, centers), torch.arange(num_clusters).expand(batch, num_clusters))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_finite_inputs_give_valid_clusters(backend):
    # NaN / inf tokens and distances that overflow to inf (then inf * 0 = NaN scores) must not crash a
    # sort (undefined behaviour on a broken order) nor give indices out of range.
    batch, n, num_clusters = 4, 12, 5
    x = torch.randn(batch, n, 3)
    x[0, 2, 1] = float("nan")
    x[1, 5, 0] = float("inf")
    x[1, 6, 0] = float("-inf")
    x[2, :4] *= 1e30
    x[3] = float("nan")
    idx, centers = hbi_ops.dpc_knn(
        x, num_clusters, k=3, mask=random_mask(batch, n, empty_sample=False), backend=backend
    )
    assert int(idx.min()) >= 0 and int(idx.max()) < num_clusters
    assert int(centers.min()) >= 0 and int(centers.max()) < n
    for b in range(batch):
        assert len(set(centers[b].tolist())) == num_clusters
    assert torch.equal(idx.gather(1, centers), torch.arange(num_clusters).expand(batch, num_clusters))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_token_a_centre(backend):
    # K = N: every token is a centre of its own cluster.
    x = torch.randn(3, 8, 4)
    idx, centers = hbi_ops.dpc_knn(x, 8, k=2, backend=backend)
    assert torch.equal(torch.sort(centers, dim=1).values, torch.arange(8).expand(3, 8))
    assert torch.equal(idx.gather(1, centers), torch.arange(8).expand(3, 8))


# ------------------------------------------------------------------------------------------------------------
# layouts, empty batch, no gradient
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_inputs(backend):
    x = torch.randn(4, 20, 6, dtype=torch.float64)[:, ::2, :]  # every other token
    mask = random_mask(4, 10).t().contiguous().t()  # column-major [4, 10]
    assert not x.is_contiguous() and not mask.is_contiguous()
    expected = oracle(x.contiguous(), mask.contiguous(), 4, 3)
    assert_same(hbi_ops.dpc_knn(x, 4, k=3, mask=mask, backend=backend), expected)

    xt = torch.randn(12, 5, 3, dtype=torch.float64).permute(1, 2, 0)  # [5, 3, 12], features strided
    assert not xt.is_contiguous()
    assert_same(
        hbi_ops.dpc_knn(xt, 2, k=2, backend=backend), oracle(xt.contiguous(), torch.ones(5, 3, dtype=torch.bool), 2, 2)
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch(backend):
    idx, centers = hbi_ops.dpc_knn(torch.randn(0, 6, 4), 3, k=2, backend=backend)
    assert idx.shape == (0, 6) and centers.shape == (0, 3)
    assert idx.dtype == torch.int64 and centers.dtype == torch.int64


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_no_gradient(backend):
    x = torch.randn(2, 6, 4, requires_grad=True)
    idx, centers = hbi_ops.dpc_knn(x, 3, k=2, backend=backend)
    assert not idx.requires_grad and not centers.requires_grad


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda b: hbi_ops.dpc_knn(torch.randn(2, 5, 3), 0, k=2, backend=b), ValueError, "num_clusters"),
        (lambda b: hbi_ops.dpc_knn(torch.randn(2, 5, 3), 6, k=2, backend=b), ValueError, "num_clusters"),
        (lambda b: hbi_ops.dpc_knn(torch.randn(2, 5, 3), 2, k=0, backend=b), ValueError, "k must"),
        (lambda b: hbi_ops.dpc_knn(torch.randn(2, 5, 3), 2, k=6, backend=b), ValueError, "k must"),
        (lambda b: hbi_ops.dpc_knn(torch.randn(5, 3), 2, k=2, backend=b), ValueError, "x must have 3"),
        (lambda b: hbi_ops.dpc_knn(torch.randn(2, 5, 3), 2, k=2, mask=torch.ones(2, 4), backend=b), ValueError, "mask"),
        (lambda b: hbi_ops.dpc_knn(torch.randint(0, 5, (2, 5, 3)), 2, k=2, backend=b), TypeError, "x must be"),
        (lambda b: hbi_ops.dpc_knn(torch.randn(2, 5, 3), 2.0, k=2, backend=b), TypeError, "num_clusters"),
    ],
)
def test_bad_arguments(backend, call, error, message):
    with pytest.raises(error, match=message):
        call(backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        hbi_ops.dpc_knn(torch.randn(2, 5, 3), 2, k=2, backend="fortran")


@pytest.mark.parametrize(
    "args,message",
    [
        (lambda: (torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool), 0, 2), "num_clusters"),
        (lambda: (torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool), 6, 2), "num_clusters"),
        (lambda: (torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool), 2, 0), "k must"),
        (lambda: (torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool), 2, 6), "k must"),
        (lambda: (torch.randn(5, 3), torch.ones(5, dtype=torch.bool), 2, 2), "x must have 3"),
        (lambda: (torch.randn(2, 5, 3), torch.ones(2, 4, dtype=torch.bool), 2, 2), "mask must have shape"),
        (lambda: (torch.randn(2, 5, 3), torch.ones(2, 5), 2, 2), "mask must be a bool"),
        (lambda: (torch.ones(2, 5, 3, dtype=torch.int32), torch.ones(2, 5, dtype=torch.bool), 2, 2), "x must be"),
    ],
)
def test_kernel_checks_its_arguments(args, message):
    # The compiled kernel guards itself too (torch.ops.hbi_ops.dpc_knn skips the Python checks).
    with pytest.raises(RuntimeError, match=message):
        torch.ops.hbi_ops.dpc_knn(*args())
