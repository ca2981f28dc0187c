"""Ablations of HBI on the synthetic events task, several seeds each, printed as a Markdown table of mean
and standard deviation: text-to-video R@1 over the test set, accuracy within a group of four (chance 25 %)
and, per hard-negative factor, how often a caption prefers its own clip to that negative (chance 50 %).

    OMP_NUM_THREADS=1 python benchmarks/ablation.py --seeds 0 1 2 --output runs/ablation

Each run trains with `hbi train`'s defaults plus the variant's flags (seed s, folder <output>/<variant>/seed<s>)
and is skipped when its metrics are already there, so an interrupted ablation resumes. The inference-rate
rows evaluate the full model's checkpoints again with other level weights (no training). Extra flags after
`--` go to every run (e.g. `-- --epochs 2` for a quick look)."""

import argparse
import json
import os
import statistics
import sys
import time

import torch

from hbi_model import build, checkpoint, cli
from hbi_model.data import collate
from hbi_model.data.events import group_accuracy
from hbi_model.evaluate import encode_all, similarity_matrix
from hbi_model.metrics import both_directions

# (name, flags of `hbi train`); the first is the full model, whose checkpoints the rate rows reuse
VARIANTS = {
    "full": ("full model (defaults)", []),
    "entity": ("entity level only", ["--use-hierarchy", "false"]),
    "no_banzhaf": ("without the Banzhaf loss", ["--use-banzhaf", "false"]),
    "paired100": (
        "teacher paired, 100 samples (as the authors ran it)",
        ["--banzhaf-estimator", "paired", "--banzhaf-samples", "100"],
    ),
    "temperature1": ("teacher in cosine units (temperature 1)", ["--teacher-temperature", "1"]),
    "element": ("Banzhaf KL reduction per element (the authors')", ["--banzhaf-reduction", "element"]),
    "transpose_ref": ("second Banzhaf term over the batch (the authors' .T)", ["--banzhaf-transpose", "reference"]),
    "init_pytorch": ("PyTorch's default initialisation", ["--init", "pytorch"]),
    "scale14": ("logit scale starting at 1/0.07 = 14.3", ["--logit-scale-init", "14.285714"]),
}
RATES = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)]
COLUMNS = [
    ("t2v R@1", "R@1"),
    ("group", "group acc."),
    ("motion", "motion"),
    ("order", "order"),
    ("binding", "binding"),
]


@torch.no_grad()
def measure(model, settings, rates):
    """Metrics of `model` on the settings' test set with inference weights `rates`."""
    tokenizer = build.tokenizer(settings)
    _, test_set = build.datasets(settings)
    loader = torch.utils.data.DataLoader(
        test_set,
        batch_size=settings["eval_batch_size"],
        collate_fn=lambda items: collate(items, tokenizer, settings["max_words"]),
    )
    model.eval()
    features = encode_all(model, loader, torch.device("cpu"), progress=False)
    sim = similarity_matrix(model, *features, rates=rates).float()
    retrieval = both_directions(sim)
    return {
        "t2v R@1": retrieval["text-to-video"]["R@1"],
        "v2t R@1": retrieval["video-to-text"]["R@1"],
        **group_accuracy(sim),
    }


def run(variant, seed, root, extra):
    """Train one variant at one seed (unless done) and return its metrics, with the rate rows for 'full'."""
    from hbi_model.train import train

    folder = os.path.join(root, variant, f"seed{seed}")
    done = os.path.join(folder, "ablation.json")
    if os.path.exists(done):
        with open(done) as handle:
            return json.load(handle)
    _, settings = cli.parse(
        ["train", *VARIANTS[variant][1], *extra, "--seed", str(seed), "--output", folder, "--quiet"]
    )
    settings["skip_eval"] = True  # measured below, with the group metrics
    start = time.time()
    if checkpoint.exists(folder):  # trained before an interruption of the evaluation: load it
        _, model = build.model(settings)
        checkpoint.load(folder, model)
        wall = None
    else:
        model, _ = train(settings)
        wall = time.time() - start
    result = {
        "variant": variant,
        "seed": seed,
        "train_seconds": wall,
        "metrics": measure(model, settings, settings.get("rates")),
    }
    if variant == "full":
        result["rates"] = {" ".join(map(str, r)): measure(model, settings, r) for r in RATES}
    with open(done + ".tmp", "w") as handle:
        json.dump(result, handle, indent=1)
    os.replace(done + ".tmp", done)
    return result


def summary(values):
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(results, seeds):
    lines = [
        f"| variant ({len(seeds)} seeds: mean ± sd) | " + " | ".join(label for _, label in COLUMNS) + " | train s |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    rows = [(VARIANTS[v][0], [r["metrics"] for r in rs], [r["train_seconds"] for r in rs]) for v, rs in results.items()]
    if "full" in results:
        for rates in RATES:
            key = " ".join(map(str, rates))
            rows.append((f"full model, inference rates {key}", [r["rates"][key] for r in results["full"]], []))
    for name, metrics, walls in rows:
        cells = [summary([m[key] for m in metrics]) for key, _ in COLUMNS]
        walls = [w for w in walls if w is not None]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(walls):.0f} |"
            if walls
            else f"| {name} | " + " | ".join(cells) + " | (eval) |"
        )
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output", default="runs/ablation")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results = {}
    for variant in args.variants:
        for seed in args.seeds:
            result = run(variant, seed, args.output, extra)
            results.setdefault(variant, []).append(result)
            m = result["metrics"]
            print(
                f"{variant} seed {seed}: R@1 {m['t2v R@1']:.1f}, group {m['group']:.1f}, motion {m['motion']:.1f}, "
                f"order {m['order']:.1f}, binding {m['binding']:.1f}, train {result['train_seconds'] or 0:.0f} s",
                flush=True,
            )
    text = table(results, args.seeds)
    print(text)
    with open(os.path.join(args.output, "table.md"), "w") as handle:
        handle.write(text + "\n")


if __name__ == "__main__":
    main()
