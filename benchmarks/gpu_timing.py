"""GPU timing of every GPU target: each backend against `torch` in the same run, by CUDA events.

    python3 benchmarks/gpu_timing.py --out results.md [--repeats 50] [--quick]

GPU time: median of `repeats` CUDA-event timings of a CUDA-graph replay of one call (graph replay
removes the per-call launch overhead; where a backend cannot be captured, plain launches are timed and
the table says so). Host overhead: mean wall time of issuing one call without waiting for the GPU.
Every figure names the card. Ratios: against the `torch` backend measured in the same run, and
against the authors' figures of docs/reference_cost.md (an H200).
"""

import argparse
import json
import statistics
import time

import torch

import hbi_ops
from hbi_ops.reference.banzhaf_vectorised import paired_textbook_vectorised
from hbi_ops.testing import backends_for

DEVICE = "cuda"
AUTHORS = {  # docs/reference_cost.md, one H200, torch 2.11
    "banzhaf paired": ("authors' loops 876 s; learned estimator 0.82 ms", 0.82e-3),
    "dpc text": ("authors' PyTorch 1.23 ms", 1.23e-3),
    "dpc frames": ("authors' PyTorch 0.84 ms", 0.84e-3),
    "dpc image": ("authors' PyTorch 15.4 ms", 15.4e-3),
    "wti forward": ("strong plain PyTorch 14.7 ms", 14.7e-3),
    "wti forward+backward": ("strong plain PyTorch 37.5 ms", 37.5e-3),
}
TARGETS = {
    "banzhaf exact": 20e-6,
    "banzhaf exact fwd+bwd": 60e-6,
    "banzhaf paired": 1e-3,
    "banzhaf msr": 0.1e-3,
    "dpc text": 30e-6,
    "dpc frames": 20e-6,
    "dpc image": 1.5e-3,
}


def gpu_time(fn, repeats, graph=True, warmup=3):
    """(median seconds per call, 'graph', 'launch' or 'cpu clock')."""
    if DEVICE == "cpu":  # trying the script without a GPU: wall clock
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
        return statistics.median(times), "cpu clock"
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    mode = "launch"
    run = fn
    if graph:
        try:  # noqa: SIM105
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            run, mode = g.replay, "graph"
        except Exception:  # not capturable (host sync, CPU work): time plain launches
            torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(times), mode


def host_overhead(fn, calls=20):
    if DEVICE == "cpu":
        return float("nan")
    torch.cuda.synchronize()
    total = 0.0
    for _ in range(calls):
        begin = time.perf_counter()
        fn()
        total += time.perf_counter() - begin
        torch.cuda.synchronize()
    return total / calls


def banzhaf_cases(quick):
    batch, samples = (16, 100) if quick else (128, 1000)
    sim = torch.randn(batch, 32, 12, device=DEVICE)
    text_mask = torch.zeros(batch, 32, dtype=torch.bool, device=DEVICE)
    text_mask[:, :20] = True
    video_mask = torch.ones(batch, 12, dtype=torch.bool, device=DEVICE)
    wt, wv = torch.randn(batch, 32, device=DEVICE), torch.randn(batch, 12, device=DEVICE)
    size = f"B={batch} T=32(20) V=12 n={samples}"
    game = (sim, text_mask, video_mask, wt, wv)
    backends = backends_for("banzhaf_interaction", DEVICE)
    exact_size = f"B={batch} T=32(20) V=12"
    yield (
        "banzhaf exact",
        f"banzhaf_interaction exact (closed form) {exact_size}",
        {b: (lambda b=b: hbi_ops.banzhaf_interaction(*game, backend=b)) for b in backends},
    )
    exact_leaves = [x.clone().requires_grad_() for x in (sim, wt, wv)]

    def exact_fwd_bwd(backend):
        out = hbi_ops.banzhaf_interaction(
            exact_leaves[0], text_mask, video_mask, exact_leaves[1], exact_leaves[2], backend=backend
        )
        return torch.autograd.grad(out.sum(), exact_leaves)

    yield (
        "banzhaf exact fwd+bwd",
        f"banzhaf_interaction exact fwd+bwd {exact_size}",
        {b: (lambda b=b: exact_fwd_bwd(b)) for b in backends},
    )
    for estimator in ("paired", "msr"):
        calls = {
            b: (
                lambda b=b, e=estimator: hbi_ops.banzhaf_interaction(*game, estimator=e, num_samples=samples, backend=b)
            )
            for b in backends_for("banzhaf_interaction", DEVICE)
        }
        if estimator == "paired":
            calls["torch-vectorised"] = lambda: paired_textbook_vectorised(*game, samples, 0)
        yield f"banzhaf {estimator}", f"banzhaf_interaction {estimator} textbook {size}", calls
    leaves = [x.clone().requires_grad_() for x in (sim, wt, wv)]

    def fwd_bwd(backend):
        out = hbi_ops.banzhaf_interaction(
            leaves[0],
            text_mask,
            video_mask,
            leaves[1],
            leaves[2],
            estimator="paired",
            num_samples=samples,
            backend=backend,
        )
        return torch.autograd.grad(out.sum(), leaves)

    def vectorised_fwd_bwd():
        return torch.autograd.grad(
            paired_textbook_vectorised(leaves[0], text_mask, video_mask, leaves[1], leaves[2], samples, 0).sum(), leaves
        )

    # The oracle's autograd graph at this size would hold ~1000 x 19M-element tensors: baseline is the
    # vectorised version here.
    calls = {b: (lambda b=b: fwd_bwd(b)) for b in backends_for("banzhaf_interaction", DEVICE) if b != "torch"}
    calls["torch-vectorised"] = vectorised_fwd_bwd
    yield "banzhaf paired fwd+bwd", f"banzhaf_interaction paired fwd+bwd {size}", calls


def dpc_cases(quick):
    sizes = [
        ("dpc text", 128, 32, 512, 16, 3, True),
        ("dpc frames", 128, 12, 512, 6, 3, False),
        ("dpc image", 4 if quick else 32, 3136, 64, 784, 5, False),
    ]
    for key, batch, n, c, k_clusters, k, masked in sizes:
        x = torch.randn(batch, n, c, device=DEVICE)
        mask = None
        if masked:
            mask = torch.arange(n, device=DEVICE)[None] < torch.randint(n // 2, n + 1, (batch, 1), device=DEVICE)
        weight = torch.randn(batch, n, device=DEVICE).exp()
        backends = [b for b in backends_for("dpc_knn", DEVICE) if b in backends_for("merge_tokens", DEVICE)]

        def call(b):
            idx, _ = hbi_ops.dpc_knn(x, k_clusters, k=k, mask=mask, backend=b)
            return hbi_ops.merge_tokens(x, idx, k_clusters, weight, backend=b)

        yield (
            key,
            f"dpc_knn + merge_tokens B={batch} N={n} C={c} K={k_clusters} k={k}{' masked' if masked else ''}",
            {b: (lambda b=b: call(b)) for b in backends},
        )


def wti_cases(quick):
    n = 200 if quick else 1000
    text = torch.nn.functional.normalize(torch.randn(n, 32, 512, device=DEVICE), dim=-1).half()
    video = torch.nn.functional.normalize(torch.randn(n, 12, 512, device=DEVICE), dim=-1).half()
    p = torch.randn(n, 32, device=DEVICE).softmax(-1).half()
    q = torch.randn(n, 12, device=DEVICE).softmax(-1).half()
    size = f"A=B={n} T=32 V=12 D=512 fp16"
    backends = backends_for("wti_similarity", DEVICE)
    yield (
        "wti forward",
        f"wti_similarity forward {size}",
        {b: (lambda b=b: hbi_ops.wti_similarity(text, video, p, q, backend=b)) for b in backends},
    )
    leaves = [x.clone().requires_grad_() for x in (text, video, p, q)]

    def fwd_bwd(b):
        return torch.autograd.grad(hbi_ops.wti_similarity(*leaves, backend=b).sum(), leaves)

    yield (
        "wti forward+backward",
        f"wti_similarity forward+backward {size}",
        {b: (lambda b=b: fwd_bwd(b)) for b in backends},
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_results.md")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the script")
    parser.add_argument("--device", default="cuda", help="'cpu' tries the script here (wall clock)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    card = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (trial run, not a GPU figure)"
    rows, records = [], []
    for cases in (banzhaf_cases, dpc_cases, wti_cases):
        for key, label, calls in cases(args.quick):
            measured = {}
            for backend, fn in calls.items():
                # the oracle's sampled estimators: seconds per call
                slow = backend == "torch" and key.startswith("banzhaf") and not key.startswith("banzhaf exact")
                if DEVICE == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                try:
                    seconds, mode = gpu_time(fn, 1 if slow else args.repeats, graph=not slow, warmup=0 if slow else 3)
                except Exception as error:  # one failing backend must not cost the rest of the table
                    print(f"{label:<70} {backend:>16} FAILED: {type(error).__name__}: {error}", flush=True)
                    rows.append(f"| {card} | {label} | {backend} | failed: {type(error).__name__} | | | | | |")
                    if DEVICE == "cuda":
                        torch.cuda.synchronize()
                    continue
                peak = torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0
                overhead = float("nan") if slow else host_overhead(fn)
                measured[backend] = (seconds, mode, overhead, peak)
                records.append(
                    dict(
                        card=card,
                        case=label,
                        backend=backend,
                        seconds=seconds,
                        mode=mode,
                        host_overhead=overhead,
                        peak_bytes=peak,
                    )
                )
                print(f"{label:<70} {backend:>16} {seconds * 1e3:10.4f} ms ({mode})", flush=True)
            baseline = measured.get("torch") or measured.get("torch-vectorised")
            for backend, (seconds, mode, overhead, peak) in measured.items():
                vs_torch = f"x{baseline[0] / seconds:.1f}" if baseline else "-"
                authors = AUTHORS.get(key)
                vs_authors = f"x{authors[1] / seconds:.2f} vs {authors[0]}" if authors else ""
                target = TARGETS.get(key)
                met = (
                    ""
                    if target is None or backend not in ("cuda", "triton")
                    else (" (target met)" if seconds <= target else f" (target {target * 1e3:g} ms missed)")
                )
                rows.append(
                    f"| {card} | {label} | {backend} | {seconds * 1e3:.4f} ms{met} | {mode} | "
                    f"{overhead * 1e6:.0f} us | {peak / 2**20:.0f} MiB | {vs_torch} | {vs_authors} |"
                )
    header = (
        "| card | operator, size | backend | GPU time (median) | timed as | host overhead per call | "
        "peak memory | vs torch (same run) | vs docs/reference_cost.md |\n|---|---|---|---|---|---|---|---|---|"
    )
    with open(args.out, "w") as handle:
        handle.write(header + "\n" + "\n".join(rows) + "\n")
    with open(args.out.rsplit(".", 1)[0] + ".json", "w") as handle:
        json.dump(records, handle, indent=1)
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
