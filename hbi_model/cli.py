"""`hbi train | eval | explain` (one flag per hyperparameter of SPEC section 2; `--config FILE.json`
sets any of them; flags win). The defaults train and evaluate on the synthetic set with no download."""
import argparse
import dataclasses
import json
import sys

from hbi_model.retrieval import HBIConfig

DEFAULTS = {
    "data": "synthetic", "data_root": None, "clip": None, "output": "runs/hbi", "epochs": 10, "batch_size": 32,
    "lr": 1e-4, "clip_lr_scale": None, "weight_decay": 0.2, "warmup": 0.1, "grad_clip": 1.0, "max_steps": None,
    "seed": 0, "workers": 0, "save_every": 50, "num_train": 2000, "num_test": 200, "max_words": 16,
    "max_frames": 6, "eval_batch_size": 64, "tiny_width": 64, "tiny_layers": 2, "with_direction": False,
}


def _parser():
    parser = argparse.ArgumentParser(prog="hbi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "eval", "explain"):
        p = commands.add_parser(name)
        p.add_argument("--config", help="JSON file of settings (any flag's name, with underscores)")
        p.add_argument("--task", choices=["retrieval", "qa"], help="text-video retrieval (default) or video QA")
        p.add_argument("--data", choices=["synthetic", "msrvtt", "msvd", "didemo", "activitynet"])
        p.add_argument("--data-root", help="folder of the data set's annotation files and videos/")
        p.add_argument("--clip", help="CLIP weights: a local folder or hub name (default: a tiny random CLIP)")
        p.add_argument("--output", help="run folder: checkpoints, results.json")
        for flag, kind in (("epochs", int), ("batch-size", int), ("lr", float), ("clip-lr-scale", float),
                           ("weight-decay", float), ("warmup", float), ("grad-clip", float), ("max-steps", int),
                           ("seed", int), ("workers", int), ("save-every", int), ("num-train", int),
                           ("num-test", int), ("max-words", int), ("max-frames", int), ("eval-batch-size", int),
                           ("tiny-width", int), ("tiny-layers", int)):
            p.add_argument(f"--{flag}", type=kind)
        for field in dataclasses.fields(HBIConfig):
            if field.name in ("max_words", "max_frames"):
                continue
            flag = "--" + field.name.replace("_", "-")
            if field.type in (bool, "bool"):
                p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), metavar="BOOL")
            elif field.name == "rates":
                p.add_argument(flag, type=float, nargs=3, metavar=("ENTITY", "ACTION", "EVENT"))
            else:
                p.add_argument(flag, type=type(field.default))
        p.add_argument("--teacher-weights", help="a pretrained Banzhaf estimator's state dict (.pt or .safetensors) "
                       "to use as the teacher instead of hbi_ops.banzhaf_interaction")
        p.add_argument("--rand-augment", type=lambda s: s.lower() in ("1", "true", "yes"), metavar="BOOL",
                       help="RandAugment on training frames of real data sets (default true, as the reference)")
        p.add_argument("--with-direction", action="store_true", default=None,
                       help="synthetic captions also name each shape's direction of motion")
        p.add_argument("--no-resume", dest="resume", action="store_false", default=None)
        p.add_argument("--no-amp", action="store_true", default=None)
        p.add_argument("--quiet", action="store_true", default=None)
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
    settings.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    if settings.get("data") != "synthetic":  # real data: SPEC section 2's sizes unless set
        for key, value in (("max_words", 32), ("max_frames", 12), ("batch_size", 128), ("epochs", 5)):
            if getattr(args, key, None) is None and key not in loaded:
                settings[key] = value
    if settings.get("clip_lr_scale") is None:  # a random tiny CLIP must learn; pretrained CLIP barely moves
        settings["clip_lr_scale"] = 1e-3 if settings.get("clip") else 1.0
    return settings


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
