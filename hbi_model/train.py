"""Training (SPEC section 2, "Optimiser"): AdamW with decoupled weight decay (not on biases and
LayerNorm weights), separate learning rates for CLIP and the new modules, linear warm-up then cosine,
gradient clipping, mixed precision on GPU, torchrun multi-process with all-gathered features,
atomic checkpoints that resume to the same result, a stop (after one retry from the last checkpoint) on a
non-finite loss or gradient, progress on a terminal or in a log, and an evaluation at the end."""

import functools
import json
import math
import os
import random

import numpy as np
import torch

from hbi_model import build, checkpoint, distributed
from hbi_model.data import collate
from hbi_model.encoders import with_image_size
from hbi_model.evaluate import evaluate, format_table
from hbi_model.progress import TrainingProgress


def load_state_dict(path):
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parameter_groups(model, lr, clip_lr_scale, weight_decay):
    """Four groups: (CLIP | new modules) x (decayed | biases and norm weights)."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clip = name.startswith("encoders.")
        no_decay = param.ndim < 2 or "norm" in name.lower()
        key = (clip, no_decay)
        groups.setdefault(
            key,
            {
                "params": [],
                "lr": lr * (clip_lr_scale if clip else 1.0),
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        groups[key]["params"].append(param)
    return list(groups.values())


def warmup_cosine(step, total, warmup_fraction):
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EpochSampler(torch.utils.data.Sampler):
    """This rank's share of a permutation drawn from (seed, epoch): the same order on resume."""

    def __init__(self, size, seed, rank=0, world=1, shuffle=True):
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.epoch = 0

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        usable = self.size - self.size % self.world
        return iter(order[:usable][self.rank :: self.world].tolist())

    def __len__(self):
        return self.size // self.world


def training_sampler(train_set, settings, rank=0, world=1):
    """The training order: the data set's own where it has one (the events task keeps its groups of four
    in one batch), else a shuffle of single pairs."""
    sampler = build.train_sampler(train_set, settings, rank, world)
    if sampler is None:
        sampler = EpochSampler(len(train_set), settings["seed"], rank, world, shuffle=not settings.get("no_shuffle"))
    return sampler


def _loader(dataset, tokenizer, settings, sampler, batch_size):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=sampler is not None,
        num_workers=settings.get("workers", 0),
        collate_fn=functools.partial(collate, tokenizer=tokenizer, max_words=settings["max_words"]),
    )


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient and a retry did not help."""


def _datasets_and_model(settings):
    """(settings, tokenizer, model, train_set, test_set); frames are decoded at the encoder's image size."""
    if settings.get("task", "retrieval") == "qa":
        from hbi_model.data.qa import qa_datasets, qa_vocabulary

        vocabulary = qa_vocabulary(settings)
        tokenizer, model = build.qa_model(settings, len(vocabulary))
        settings = with_image_size(settings, model.encoders)
        train_set, test_set, _ = qa_datasets(settings, vocabulary)
    else:
        tokenizer, model = build.model(settings)
        settings = with_image_size(settings, model.encoders)
        train_set, test_set = build.datasets(settings)
    return settings, tokenizer, model, train_set, test_set


def _restore(output, model, optimizer, scheduler, device):
    """Load the run's checkpoint into model, optimizer and scheduler; returns its step."""
    state = checkpoint.load(output, model, map_location=device)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"]


def _non_finite(parts, grad_norm):
    """What is not finite in a step ('loss' or 'gradient') and its detail, or None."""
    bad = [name for name, value in parts.items() if not torch.isfinite(value.detach()).all()]
    if bad:
        return "loss", "non-finite: " + ", ".join(f"{name}={float(parts[name].detach()):g}" for name in bad)
    if grad_norm is not None and not torch.isfinite(grad_norm):
        return "gradient", f"gradient norm {float(grad_norm):g}"
    return None


def train(settings):
    rank, world, device = distributed.setup()
    main_process = rank == 0
    seed_everything(settings["seed"])
    task = settings.get("task", "retrieval")
    settings, tokenizer, model, train_set, test_set = _datasets_and_model(settings)
    if settings.get("teacher_weights"):
        model.load_teacher(load_state_dict(settings["teacher_weights"]))
    model.to(device)
    per_rank = settings["batch_size"] // world
    sampler = training_sampler(train_set, settings, rank, world)
    loader = _loader(train_set, tokenizer, settings, sampler, per_rank)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_set)} training pairs make no batch of --batch-size {settings['batch_size']} "
            f"({world} process(es)): the training set is empty or too small"
        )
    total_steps = settings.get("max_steps") or settings["epochs"] * steps_per_epoch
    optimizer = torch.optim.AdamW(
        parameter_groups(model, settings["lr"], settings["clip_lr_scale"], settings["weight_decay"]),
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, total=total_steps, warmup_fraction=settings["warmup"])
    )
    step, output = 0, settings["output"]
    saved_step = None  # the step of this run's checkpoint, the one a non-finite step retries from
    if settings.get("resume", True) and checkpoint.exists(output):
        step = saved_step = _restore(output, model, optimizer, scheduler, device)
        if main_process:
            print(f"resumed from {output} at step {step}")
    wrapped = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    amp = device.type == "cuda" and not settings.get("no_amp")
    progress = TrainingProgress(
        total_steps, math.ceil(total_steps / steps_per_epoch), step, enabled=main_process and not settings.get("quiet")
    )
    model.train()
    last, retried_from = {}, None
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.epoch = epoch
        restarted = False
        for index, batch in enumerate(loader):
            if index < skip:  # resuming inside an epoch: the same batches as an uninterrupted run
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                extra = {"answer": batch["answer"].to(device)} if task == "qa" else {}
                parts = wrapped(
                    batch["input_ids"].to(device),
                    batch["attention_mask"].to(device),
                    batch["pixel_values"].to(device),
                    batch["frame_mask"].to(device),
                    gather=distributed.gather_with_grad if world > 1 else None,
                    **extra,
                )
            optimizer.zero_grad(set_to_none=True)
            problem = _non_finite(parts, None)
            if problem is None:
                parts["loss"].backward()
                if settings.get("debug_dump") and step == 0:
                    _dump(settings["debug_dump"], model, parts, rank)
                problem = _non_finite(parts, torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"]))
            if problem is not None:
                what, detail = problem
                message = (
                    f"training stopped: the {what} is not finite at step {step + 1} of {total_steps} "
                    f"(epoch {epoch + 1}; {detail})"
                )
                if saved_step is None:
                    raise NonFiniteLossError(
                        f"{message}; there is no checkpoint to retry from (--save-every). "
                        f"Unreadable videos are logged as warnings; a lower --lr may help"
                    )
                if retried_from is not None:
                    raise NonFiniteLossError(
                        f"{message}, after training was retried once from the checkpoint of "
                        f"step {retried_from}. Unreadable videos are logged as warnings; a "
                        f"lower --lr may help"
                    )
                if main_process:
                    print(f"{message}: retrying once from the checkpoint of step {saved_step}", flush=True)
                step = retried_from = _restore(output, model, optimizer, scheduler, device)
                progress.restart(step)
                restarted = True
                break
            optimizer.step()
            scheduler.step()
            step += 1
            last = {k: float(v.detach()) for k, v in parts.items()}
            progress.step(last["loss"])
            if main_process and settings.get("save_every") and step % settings["save_every"] == 0:
                _save(output, model, optimizer, scheduler, step)
                saved_step = step
            if step >= total_steps or step == settings.get("stop_after"):
                break
        if not restarted:
            progress.end_epoch(epoch, step)
        if step == settings.get("stop_after"):  # an interruption, for tests: the checkpoint is what remains
            break
    progress.close()
    results = {"step": step, "last_losses": last}
    if main_process:
        _save(output, model, optimizer, scheduler, step)
        if not settings.get("skip_eval"):
            test_loader = _loader(test_set, tokenizer, settings, None, settings.get("eval_batch_size", 64))
            if task == "qa":
                from hbi_model.evaluate import evaluate_qa, format_qa_table

                metrics = evaluate_qa(model, test_loader, device, train_set, test_set, not settings.get("quiet"))
                print(format_qa_table(metrics, f"test set: {len(test_set)} questions"))
            else:
                metrics = evaluate(model, test_loader, device, progress=not settings.get("quiet"))
                print(
                    format_table(metrics, f"test set: {len(test_set)} pairs (chance R@1 = {100 / len(test_set):.2f}%)")
                )
            results["metrics"] = metrics
        with open(os.path.join(output, "results.json"), "w") as handle:
            json.dump(results, handle, indent=1)
    distributed.cleanup()
    return model, results


def _save(output, model, optimizer, scheduler, step):
    checkpoint.save(
        output,
        model,
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "rng": torch.get_rng_state(),
        },
    )


def _dump(path, model, parts, rank):
    """The first step's loss and gradients, for the multi-process equivalence test."""
    if rank == 0:
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": parts["loss"].detach(), "grads": grads}, path)
