"""Accuracy of the sampled Banzhaf estimators against the exact index (the closed form) at the entity level.

    python benchmarks/banzhaf_accuracy.py [--batch 16] [--seeds 3]

Games as the model's entity level: T = 32 words of which 20 real, V = 12 frames, random similarities and
weight logits (standard normal), float64. Error: RMSE over the real cells divided by the mean |I| of the
exact index, averaged over seeds. Prints a Markdown table.
"""

import argparse

import torch

import hbi_ops
from hbi_ops.testing import random_game


def relative_error(estimate, exact, real):
    return ((estimate - exact)[real].pow(2).mean().sqrt() / exact[real].abs().mean()).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args()
    torch.manual_seed(0)
    game = random_game(args.batch, 32, 12, dtype=torch.float64, real_words=20)
    real = game[1][:, :, None] & game[2][:, None, :]
    exact = hbi_ops.banzhaf_interaction(*game)
    print(f"| estimator | {' | '.join(f'{n} samples' for n in args.samples)} |")
    print(f"|---|{'---|' * len(args.samples)}")
    for estimator in ("paired", "msr"):
        cells = []
        for n in args.samples:
            errors = [
                relative_error(
                    hbi_ops.banzhaf_interaction(*game, estimator=estimator, num_samples=n, seed=s), exact, real
                )
                for s in range(args.seeds)
            ]
            cells.append(f"{100 * sum(errors) / len(errors):.1f} %")
        print(f"| {estimator} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
