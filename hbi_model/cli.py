"""`hbi train | eval | explain` (one flag per hyperparameter of the model, docs/model.md; `--config FILE.json`
sets any of them; flags win). The defaults train and evaluate on the synthetic events task with no download."""

import argparse
import dataclasses
import json
import sys

from hbi_model.retrieval import HBIConfig

DEFAULTS = {
    "task": "retrieval",
    "data": "synthetic",
    "data_root": None,
    "clip": None,
    "output": "runs/hbi",
    "epochs": 20,
    "batch_size": 32,
    "lr": 5e-4,
    "clip_lr_scale": None,
    "weight_decay": 0.2,
    "warmup": 0.1,
    "grad_clip": 1.0,
    "max_steps": None,
    "seed": 0,
    "workers": 0,
    "save_every": 50,
    "num_train": 2000,
    "num_test": 400,
    "max_words": 16,
    "max_frames": 6,
    "eval_batch_size": 64,
    "tiny_width": 64,
    "tiny_layers": 2,
    "logit_scale_init": 100.0,
    "with_direction": False,
    "rand_augment": True,
}
REAL_DATA = {"max_words": 32, "max_frames": 12, "batch_size": 128, "epochs": 5, "lr": 1e-4}  # the reference's

# One line each; "{default}" is filled in from DEFAULTS or HBIConfig.
HELP = {
    "config": "JSON file of settings (any flag's name, with underscores); flags win",
    "task": "retrieval or qa (video question answering) (default: {default})",
    "data": "synthetic (events), shapes, msrvtt, msvd, didemo or activitynet (default: {default})",
    "data_root": "folder of a real data set's annotation files and videos/ (default: none)",
    "clip": "CLIP weights: a local folder or hub name (default: a tiny random CLIP)",
    "output": "run folder: checkpoints, results.json (default: {default})",
    "epochs": "training epochs (default: {default}; 5 on real data)",
    "batch_size": "global batch size; a multiple of 4 on the events task (default: {default}; 128 on real data)",
    "lr": "learning rate of the new modules (default: {default}; 1e-4 on real data)",
    "clip_lr_scale": "CLIP's learning rate / lr (default: 1 for the random CLIP, 1e-3 for a pretrained one)",
    "weight_decay": "decoupled weight decay, not on biases and norms (default: {default})",
    "warmup": "fraction of the steps of linear warm-up before the cosine decay (default: {default})",
    "grad_clip": "gradient norm clipping (default: {default})",
    "max_steps": "stop after this many steps (default: epochs x steps per epoch)",
    "seed": "seed of the model, the data and the order (default: {default})",
    "workers": "data-loader worker processes (default: {default})",
    "save_every": "checkpoint every N steps, 0 for only the last (default: {default})",
    "num_train": "synthetic training clips (default: {default})",
    "num_test": "synthetic test clips; a multiple of 4 on the events task (default: {default})",
    "max_words": "text tokens incl. start and end (default: {default}; 32 on real data)",
    "max_frames": "frames per video (default: {default}; 12 on real data)",
    "eval_batch_size": "batch size of the evaluation's encoding (default: {default})",
    "tiny_width": "width of the tiny random CLIP (default: {default})",
    "tiny_layers": "layers of each tower of the tiny random CLIP (default: {default})",
    "logit_scale_init": "initial logit scale of the tiny random CLIP, as the reference's 100 (default: {default})",
    "temporal_layers": "layers of the temporal transformer (default: {default})",
    "temporal_heads": "heads of the temporal transformer (default: {default})",
    "t_rate0": "text cluster ratio, entity -> action (default: {default})",
    "v_rate0": "video cluster ratio, entity -> action (default: {default}; 0.5 on the events task)",
    "t_rate1": "text cluster ratio, action -> event (default: {default})",
    "v_rate1": "video cluster ratio, action -> event (default: {default})",
    "cluster_k": "neighbours of dpc_knn's local density (default: {default})",
    "attention_heads": "heads of the TCBlock attention (default: {default})",
    "skl": "weight of the Banzhaf loss (default: {default})",
    "kl": "weight of the cross-level KL (default: {default})",
    "use_banzhaf": "train with the Banzhaf loss (default: {default})",
    "use_hierarchy": "action and event levels; false: the entity level only (default: {default})",
    "banzhaf_definition": "teacher's game: textbook or reference, the authors' label generator (default: {default})",
    "banzhaf_estimator": "teacher's estimator: exact, paired or msr (sampled) (default: {default})",
    "banzhaf_samples": "coalitions a cell of the sampled estimators (default: {default})",
    "exact_max_players": "players the reference definition is enumerated up to, else sampled (default: {default})",
    "teacher_temperature": "targets = softmax(index / T); the authors' R x 1000 is 1e-3 (default: {default})",
    "reference_weights": "the weight heads' probabilities as logits, as the authors' generator (default: {default})",
    "banzhaf_reduction": "Banzhaf KL: row (a sum per row) or element (the authors' mean per cell) (default: {default})",
    "banzhaf_transpose": "second Banzhaf term: words, or reference (the authors' .T: the batch) (default: {default})",
    "entity_padding": "entity-level WTI at padding: ignore, or zero (the authors' zero fill) (default: {default})",
    "init": "new modules' initialisation: reference (the authors') or pytorch (default: {default})",
    "rates": "inference weights of the entity, action and event levels (default: {default})",
    "teacher_weights": "a pretrained estimator's state dict (.pt, .safetensors) as the teacher (default: none)",
    "rand_augment": "RandAugment on training frames of real data sets (default: {default})",
    "with_direction": "shapes data: captions also name each shape's direction (default: off)",
    "resume": "start fresh instead of resuming from the run folder's checkpoint (default: resume)",
    "no_amp": "no bf16 autocast on GPU (default: autocast on GPU)",
    "quiet": "no progress bars (default: off)",
}


def _bool(text):
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _help(name, default):
    if isinstance(default, tuple):
        default = " ".join(f"{v:g}" for v in default)
    return HELP[name].format(default=default)


def _parser():
    formatter = lambda prog: argparse.HelpFormatter(prog, max_help_position=34, width=160)  # noqa: E731
    parser = argparse.ArgumentParser(prog="hbi", description=__doc__, formatter_class=formatter)
    commands = parser.add_subparsers(dest="command", required=True)
    model_defaults = {f.name: f.default for f in dataclasses.fields(HBIConfig)}
    for name in ("train", "eval", "explain"):
        p = commands.add_parser(name, formatter_class=formatter)
        p.add_argument("--config", metavar="FILE", help=_help("config", None))
        p.add_argument("--task", choices=["retrieval", "qa"], metavar="NAME", help=_help("task", DEFAULTS["task"]))
        p.add_argument(
            "--data",
            choices=["synthetic", "shapes", "msrvtt", "msvd", "didemo", "activitynet"],
            metavar="NAME",
            help=_help("data", DEFAULTS["data"]),
        )
        for flag in ("data-root", "clip", "output"):
            key = flag.replace("-", "_")
            p.add_argument(f"--{flag}", metavar="PATH", help=_help(key, DEFAULTS[key]))
        for flag, kind in (
            ("epochs", int),
            ("batch-size", int),
            ("lr", float),
            ("clip-lr-scale", float),
            ("weight-decay", float),
            ("warmup", float),
            ("grad-clip", float),
            ("max-steps", int),
            ("seed", int),
            ("workers", int),
            ("save-every", int),
            ("num-train", int),
            ("num-test", int),
            ("max-words", int),
            ("max-frames", int),
            ("eval-batch-size", int),
            ("tiny-width", int),
            ("tiny-layers", int),
            ("logit-scale-init", float),
        ):
            key = flag.replace("-", "_")
            p.add_argument(f"--{flag}", type=kind, metavar="N" if kind is int else "X", help=_help(key, DEFAULTS[key]))
        for field in dataclasses.fields(HBIConfig):
            if field.name in ("max_words", "max_frames"):
                continue
            flag, default = "--" + field.name.replace("_", "-"), model_defaults[field.name]
            if field.type in (bool, "bool"):
                p.add_argument(flag, type=_bool, metavar="BOOL", help=_help(field.name, str(default).lower()))
            elif field.name == "rates":
                p.add_argument(flag, type=float, nargs=3, metavar=("E", "A", "V"), help=_help(field.name, default))
            else:
                kind = type(default)
                metavar = "WORD" if kind is str else "N" if kind is int else "X"
                p.add_argument(flag, type=kind, metavar=metavar, help=_help(field.name, default))
        p.add_argument("--teacher-weights", metavar="FILE", help=_help("teacher_weights", None))
        p.add_argument("--rand-augment", type=_bool, metavar="BOOL", help=_help("rand_augment", "true"))
        p.add_argument("--with-direction", action="store_true", default=None, help=_help("with_direction", None))
        p.add_argument("--no-resume", dest="resume", action="store_false", default=None, help=_help("resume", None))
        p.add_argument("--no-amp", action="store_true", default=None, help=_help("no_amp", None))
        p.add_argument("--quiet", action="store_true", default=None, help=_help("quiet", None))
        p.add_argument("--debug-dump", help=argparse.SUPPRESS)
        if name == "explain":
            from hbi_model.explain import add_arguments

            add_arguments(p)
    return parser


def settings_from(args):
    settings, loaded = dict(DEFAULTS), {}
    if args.config:
        with open(args.config) as handle:
            loaded = json.load(handle)
        settings.update(loaded)
    given = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    settings.update(given)
    explicit = set(given) | set(loaded)
    if settings.get("data") not in ("synthetic", "shapes"):  # real data: the reference's settings unless set
        settings.update({k: v for k, v in REAL_DATA.items() if k not in explicit})
    if settings.get("clip_lr_scale") is None:  # a random tiny CLIP must learn; pretrained CLIP barely moves
        settings["clip_lr_scale"] = 1e-3 if settings.get("clip") else 1.0
    return settings


def parse(argv):
    """(command, settings) of a command line such as ["train", "--epochs", "3"]."""
    args = _parser().parse_args(argv)
    return args.command, settings_from(args)


def main(argv=None):
    args = _parser().parse_args(argv)
    settings = settings_from(args)
    if args.command == "train":
        from hbi_model.train import train

        train(settings)
    elif args.command == "eval":
        from hbi_model.run_eval import run_eval

        run_eval(settings)
    else:
        from hbi_model.explain import explain

        explain(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
