"""banzhaf_interaction (docs/banzhaf.md) in Triton: forward and backward of every definition and estimator.

Design. One program per (pair b, chunk of samples); R [BT, BV] (BT = next_power_of_2(T), BV likewise)
stays in registers. Per sample the program draws the Philox coalition (tl Philox4x32-10 on uint32,
counter (s, b, k // 128, 0), key (seed lo, seed hi): the same bits as hbi_ops.philox and csrc/philox.h),
then derives the coalition state as [BT]/[BV] vectors from masked [BT, BV] tiles: the top-2 of every
row over S_v (max, first argmax, second max, its index) and of every column over S_t. From them two
tiles hold, for every cell (i, j), "row t's maximum over S_v without frame j" (W[t, j]) and "column
v's maximum over S_t without word i" (X[i, v]). Every value the estimators need for cell (i, j)
(f(c + i + j), f(c + i), f(c + j), f(c) for c = S \\ {i, j}, and the reference's zero-filled F) is a
softmax-weighted sum whose terms depend on (t, j) (text side) or (i, v) (video side) only, plus a
correction at t = i (v = j): column sums over t (row sums over v) of a [BT, BV] tile and O(1) per
cell. The softmax weights are taken relative to the coalition's own largest logit (and to the second
largest for c = S minus the top member; a joining player above c's largest rescales c's terms), so
they are exact for any finite logits (_softmax_state). So a sample costs O(T * V) for all T * V cells at
once (the textbook fast path of the CPU code, done as tile operations). The reference's value1 has
softmax weights exp(p_t / Z(i)) that depend on (t, i): a loop over t (and over v) of [BT, BV] tile
updates, O(T * V * (T + V)) a sample.

Backward differentiates the same per-sample expressions, recomputing the coalitions from the seed.
For a value whose text part is sum_{t in X_t(i)} a_t(i) M[t, j], the gradient coefficient of every
(t, j) is K[t, j] = sum_i G[i, j] a_t(i) (_side_grad), which goes to sim[t, argmax of M[t, j]]: the
argmax is row t's first or second argmax (scattered by a one-hot compare after summing over j), or
(t, j) itself when the added frame j wins. Same for the video side.
Per-chunk partials [B, chunks, ...] are summed in a fixed order afterwards: results are deterministic
(no atomics). fp16/bf16 accumulate in fp32, fp64 in fp64.

msr: one pass per chunk accumulates the stratum sums and counts of f(S) (as a [T+1, V+1] tile: row T
holds the frame sums, column V the word sums, (T, V) the total), a second small kernel sums the chunks
in order and forms the stratified means. exact (reference definition): programs over chunks of the 2^n
subsets of each pair. The exact textbook index is banzhaf_closed_form.py's.

Floor (the GPU target, H100: 3.35 TB/s, ~51 TFLOP/s fp32 without tensor cores): paired textbook,
B=128, T=32 (20 real), V=12, 1000 samples. Bytes: sim + weights + out, ~0.4 MB: 0.1 us. Work per
(pair, sample): ~30 flops for each of the 20 x 12 real cells plus ~10 x 20 x 12 for the top-2 and
the four sums, ~10 k flops; 128 k (pair, sample) -> ~1.3 GFLOP -> ~25 us at 51 TFLOP/s, but the
tiles are padded to 32 x 16 (2.1x) -> ~55 us of issue; floor ~50 us, target 1 ms. msr: ~3 k flops a
(pair, sample) -> ~0.4 GFLOP padded -> ~8 us; the floor there is the two launches (~5-10 us);
target 0.1 ms. (Not measured: no GPU was available when this was written.)

Geometry: grid (B, programs per pair), about 8 programs per SM for the cell kernels (16 for msr), 2
warps for a 32 x 16 tile in the forward pass (ptxas, sm_90: 157 registers, no
spills), 4 in the backward (199 registers textbook, 254 reference, no spills), 1 for msr (122).
Expected from an instruction count (~1 k warp-instructions a (pair, sample) forward): ~0.3 ms for the
paired target, ~0.05 ms of kernel time for msr, where the Python launch overhead (two launches, no
custom-op dispatch when nothing needs a gradient) is of the same order as the 0.1 ms target.
"""

import torch
import triton
import triton.language as tl

from hbi_ops import ops

from . import _launch, banzhaf_closed_form
from .banzhaf_cells import _cells_bwd_kernel, _cells_fwd_kernel
from .banzhaf_value import _msr_finish_kernel, _sum_finish_kernel, _value_bwd_kernel, _value_fwd_kernel

# ------------------------------------------------------------------------------------------------
# Launch helpers


def _programs_per_pair(tensor, batch, items, per_sm=8):
    """Programs per pair: enough (about per_sm per SM) to fill the GPU; a few on the interpreter."""
    if not _launch.compiled(tensor):
        return max(1, min(items, 3))
    target = per_sm * _launch.multiprocessor_count(tensor.device)
    return max(1, min(items, -(-target // max(1, batch))))


def _num_warps(bt, bv, backward=False):
    """Warps per program: a [BT, BV] tile over them, ~4 (forward) or ~2 (backward: more live tiles)
    elements a thread, at most 16 warps (a 128 x 64 tile spills about half as much as at 8: ptxas, sm_90,
    tests/ops/test_triton_lowering.py; the full size, 32 x 16, is unaffected)."""
    per_warp = 128 if backward else 256
    return max(1, min(16, bt * bv // per_warp))


class _Launch:
    """Normalised inputs and launch geometry of one call."""

    def __init__(self, sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
        self.sim, self.tm, self.vm, self.wt, self.wv = _launch.pair_inputs(
            sim, text_mask, video_mask, text_weight, video_weight
        )
        self.B, self.T, self.V = sim.shape
        self.acc_dtype = torch.float64 if sim.dtype == torch.float64 else torch.float32
        self.ACC = tl.float64 if sim.dtype == torch.float64 else tl.float32
        self.BT = max(2, triton.next_power_of_2(self.T))
        self.BV = max(2, triton.next_power_of_2(self.V))
        self.NBLK = (self.T + self.V + 127) // 128
        # msr programs evaluate one coalition value a sample (few live tiles): one warp
        # up to 512 cells, no cross-warp reductions, and twice as many programs to hide latency.
        light = estimator == "msr"
        self.num_warps = max(1, self.BT * self.BV // 512) if light else _num_warps(self.BT, self.BV)
        self.num_warps_backward = _num_warps(self.BT, self.BV, backward=True)
        per_sm = 16 if light else 8
        seed = int(seed) % (1 << 64)
        # Key halves as signed int32 (one kernel signature for every seed), read back as uint32.
        self.seed_lo, self.seed_hi = ((half ^ 0x80000000) - 0x80000000 for half in (seed & 0xFFFFFFFF, seed >> 32))
        self.exact = estimator == "exact"
        if self.exact:
            # Player index of every position (words first, then frames); subsets are split among
            # programs inside the kernel (2^n differs by pair: no host synchronisation).
            words = self.tm.to(torch.int32).cumsum(1) - 1
            frames = self.vm.to(torch.int32).cumsum(1) - 1 + self.tm.to(torch.int32).sum(1, keepdim=True)
            self.players = torch.cat([words, frames], 1).to(torch.int32).contiguous()
            self.nprog = _programs_per_pair(self.sim, self.B, 1 << min(self.T + self.V, 20), per_sm)
            self.per_prog = 0
            self.num_items = 0
        else:
            self.players = self.tm  # unused
            self.nprog = _programs_per_pair(self.sim, self.B, num_samples, per_sm)
            self.per_prog = -(-num_samples // self.nprog)
            self.nprog = -(-num_samples // self.per_prog)
            self.num_items = num_samples
        self.grid = (self.B, self.nprog)

    def common(self, backward=False):
        return dict(
            NPROG=self.nprog,
            NBLK=self.NBLK,
            ACC=self.ACC,
            BT=self.BT,
            BV=self.BV,
            num_warps=self.num_warps_backward if backward else self.num_warps,
        )

    def empty_partials(self):
        return torch.empty((self.B, self.nprog, self.T, self.V), dtype=self.acc_dtype, device=self.sim.device)


def _msr_strata(L):
    part = torch.empty((L.B, L.nprog, L.T + 1, L.V + 1), dtype=L.acc_dtype, device=L.sim.device)
    cnt = torch.empty((L.B, L.nprog, L.T + 1, L.V + 1), dtype=torch.int32, device=L.sim.device)
    _value_fwd_kernel[L.grid](
        L.sim,
        L.tm,
        L.vm,
        L.wt,
        L.wv,
        L.players,
        part,
        cnt,
        L.T,
        L.V,
        L.num_items,
        L.per_prog,
        L.seed_lo,
        L.seed_hi,
        **L.common(),
    )
    return part, cnt


def _forward(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
    if estimator == "exact" and definition == "textbook":
        return banzhaf_closed_form.forward(sim, text_mask, video_mask, text_weight, video_weight)
    out = torch.empty_like(sim, memory_format=torch.contiguous_format)
    if sim.numel() == 0:
        return out.zero_()
    L = _Launch(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed)
    finish = dict(NPROG=L.nprog, BT=L.BT, BV=L.BV, num_warps=L.num_warps)
    with _launch.device_guard(sim):
        if estimator == "msr":
            part, cnt = _msr_strata(L)
            _msr_finish_kernel[(L.B,)](part, cnt, L.tm, L.vm, out, L.T, L.V, **finish)
            return out
        part = L.empty_partials()
        _cells_fwd_kernel[L.grid](
            L.sim,
            L.tm,
            L.vm,
            L.wt,
            L.wv,
            L.players,
            part,
            L.T,
            L.V,
            L.num_items,
            L.per_prog,
            L.seed_lo,
            L.seed_hi,
            REFERENCE=definition == "reference",
            EXACT=L.exact,
            **L.common(),
        )
        divisor = 1 if L.exact else num_samples
        _sum_finish_kernel[(L.B,)](part, L.tm, L.vm, out, L.T, L.V, divisor, **finish)
    return out


def _backward(grad, sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
    if estimator == "exact" and definition == "textbook":
        return banzhaf_closed_form.backward(grad, sim, text_mask, video_mask, text_weight, video_weight)
    if sim.numel() == 0:
        return torch.zeros_like(sim), torch.zeros_like(text_weight), torch.zeros_like(video_weight)
    L = _Launch(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed)
    grad = grad.to(sim.dtype).contiguous()
    device = sim.device
    gs = torch.empty((L.B, L.nprog, L.T, L.V), dtype=L.acc_dtype, device=device)
    gt = torch.empty((L.B, L.nprog, L.T), dtype=L.acc_dtype, device=device)
    gv = torch.empty((L.B, L.nprog, L.V), dtype=L.acc_dtype, device=device)
    with _launch.device_guard(sim):
        if estimator == "msr":
            _part, cnt = _msr_strata(L)
            cnt = cnt.sum(1, dtype=torch.int32).contiguous()  # [B, T + 1, V + 1], integer: exact
            _value_bwd_kernel[L.grid](
                grad,
                L.sim,
                L.tm,
                L.vm,
                L.wt,
                L.wv,
                L.players,
                cnt,
                gs,
                gt,
                gv,
                L.T,
                L.V,
                L.num_items,
                L.per_prog,
                L.seed_lo,
                L.seed_hi,
                **L.common(backward=True),
            )
        else:
            _cells_bwd_kernel[L.grid](
                grad,
                L.sim,
                L.tm,
                L.vm,
                L.wt,
                L.wv,
                L.players,
                gs,
                gt,
                gv,
                L.T,
                L.V,
                L.num_items,
                L.per_prog,
                L.seed_lo,
                L.seed_hi,
                REFERENCE=definition == "reference",
                EXACT=L.exact,
                **L.common(backward=True),
            )
    return gs.sum(1).to(sim.dtype), gt.sum(1).to(sim.dtype), gv.sum(1).to(sim.dtype)


# ------------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("hbi_ops_triton::banzhaf_interaction", mutates_args=())
def banzhaf_interaction_op(
    sim: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    text_weight: torch.Tensor,
    video_weight: torch.Tensor,
    definition: str,
    estimator: str,
    num_samples: int,
    seed: int,
) -> torch.Tensor:
    return _forward(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed)


@torch.library.custom_op("hbi_ops_triton::banzhaf_interaction_backward", mutates_args=())
def banzhaf_interaction_backward_op(
    grad: torch.Tensor,
    sim: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    text_weight: torch.Tensor,
    video_weight: torch.Tensor,
    definition: str,
    estimator: str,
    num_samples: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(
        grad, sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
    )


ops.register("hbi_ops_triton", ops.banzhaf)


def banzhaf_interaction(
    sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
):
    """The `triton` backend; arguments normalised by hbi_ops.banzhaf_interaction."""
    if not torch.compiler.is_compiling() and not (
        torch.is_grad_enabled() and (sim.requires_grad or text_weight.requires_grad or video_weight.requires_grad)
    ):
        # Nothing to differentiate or trace: skip the custom-op dispatch (tens of microseconds).
        return _forward(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed)
    return banzhaf_interaction_op(
        sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
    )
