"""Every GPU kernel once, forward and backward, on small shapes: the program compute-sanitizer runs
(memcheck, racecheck, synccheck) in benchmarks/gpu_check.sh. Small enough that the sanitizers finish in a
few minutes; the shapes still cover several tiles, padding, empty pairs and every estimator.

    python benchmarks/gpu_sanitize.py [--device cuda] [--backends cuda triton]
"""

import argparse
import time

import torch

import hbi_ops
from hbi_ops.testing import padded_mask, random_game


def banzhaf(backend, device):
    game = random_game(3, 37, 6, torch.float32, device=device)  # two 32-word tiles, padding, 43 players
    small = random_game(2, 5, 4, torch.float32, device=device)
    for definition, estimator, inputs in (
        ("textbook", "exact", game),
        ("textbook", "paired", game),
        ("textbook", "msr", game),
        ("reference", "paired", game),
        ("reference", "exact", small),
    ):
        leaves = [x.clone().requires_grad_() for x in (inputs[0], inputs[3], inputs[4])]
        out = hbi_ops.banzhaf_interaction(
            leaves[0],
            inputs[1],
            inputs[2],
            leaves[1],
            leaves[2],
            definition=definition,
            estimator=estimator,
            num_samples=40,
            seed=1,
            backend=backend,
        )
        torch.autograd.grad(out.sum(), leaves)
        yield f"banzhaf_interaction {definition} {estimator}"


def wti(backend, device):
    for dtype in (torch.float16, torch.float32):
        text = torch.randn(9, 33, 40, device=device, dtype=dtype, requires_grad=True)
        video = torch.randn(7, 13, 40, device=device, dtype=dtype, requires_grad=True)
        p = torch.rand(9, 33, device=device, dtype=dtype, requires_grad=True)
        q = torch.rand(7, 13, device=device, dtype=dtype, requires_grad=True)
        for padding in ("ignore", "zero"):
            score = hbi_ops.wti_similarity(
                text,
                video,
                p,
                q,
                padded_mask(9, 33, device=device),
                padded_mask(7, 13, device=device),
                padding=padding,
                backend=backend,
            )
            torch.autograd.grad(score.sum(), (text, video, p, q))
            yield f"wti_similarity {dtype} {padding}"


def clustering(backend, device):
    for n, c, k_clusters, masked in ((32, 64, 8, True), (12, 64, 3, False), (300, 16, 40, True)):
        x = torch.randn(3, n, c, device=device)
        mask = padded_mask(3, n, device=device) if masked else None
        idx, _ = hbi_ops.dpc_knn(x, k_clusters, k=3, mask=mask, backend=backend)
        x.requires_grad_()
        weight = torch.rand(3, n, device=device, requires_grad=True)
        merged = hbi_ops.merge_tokens(x, idx, k_clusters, weight=weight, backend=backend)
        torch.autograd.grad(merged.sum(), (x, weight))
        yield f"dpc_knn + merge_tokens N={n}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backends", nargs="+", default=["cuda", "triton"])
    args = parser.parse_args()
    for backend in args.backends:
        for run in (banzhaf, wti, clustering):
            for name in run(backend, args.device):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                print(f"{time.strftime('%T')} {backend:>6} {name}", flush=True)
    print("all kernels ran")


if __name__ == "__main__":
    main()
