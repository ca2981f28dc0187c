"""Training (SPEC section 2, "Optimiser"): AdamW with decoupled weight decay (not on biases and
LayerNorm weights), separate learning rates for CLIP and the new modules, linear warm-up then cosine,
gradient clipping, mixed precision on GPU, torchrun multi-process with all-gathered features,
atomic checkpoints that resume to the same result, a progress bar, and an evaluation at the end."""
import functools
import json
import math
import os
import random

import numpy as np
import torch
from tqdm import tqdm

from hbi_model import build, checkpoint, distributed
from hbi_model.data import collate
from hbi_model.evaluate import evaluate, format_table


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
        groups.setdefault(key, {"params": [], "lr": lr * (clip_lr_scale if clip else 1.0),
                                "weight_decay": 0.0 if no_decay else weight_decay})
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
        return iter(order[:usable][self.rank::self.world].tolist())

    def __len__(self):
        return self.size // self.world


def _loader(dataset, tokenizer, settings, sampler, batch_size):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=sampler is not None,
                                       num_workers=settings.get("workers", 0),
                                       collate_fn=functools.partial(collate, tokenizer=tokenizer,
                                                                    max_words=settings["max_words"]))


def train(settings):
    rank, world, device = distributed.setup()
    main_process = rank == 0
    seed_everything(settings["seed"])
    task = settings.get("task", "retrieval")
    if task == "qa":
        from hbi_model.data.qa import qa_datasets

        train_set, test_set, vocabulary = qa_datasets(settings)
        tokenizer, model = build.qa_model(settings, len(vocabulary))
    else:
        tokenizer, model = build.model(settings)
        train_set, test_set = build.datasets(settings)
    if settings.get("teacher_weights"):
        model.load_teacher(load_state_dict(settings["teacher_weights"]))
    model.to(device)
    per_rank = settings["batch_size"] // world
    sampler = EpochSampler(len(train_set), settings["seed"], rank, world, shuffle=not settings.get("no_shuffle"))
    loader = _loader(train_set, tokenizer, settings, sampler, per_rank)
    steps_per_epoch = len(loader)
    total_steps = settings.get("max_steps") or settings["epochs"] * steps_per_epoch
    optimizer = torch.optim.AdamW(parameter_groups(model, settings["lr"], settings["clip_lr_scale"],
                                                   settings["weight_decay"]), betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, total=total_steps, warmup_fraction=settings["warmup"]))
    step, output = 0, settings["output"]
    if settings.get("resume", True) and checkpoint.exists(output):
        state = checkpoint.load(output, model, map_location=device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        torch.set_rng_state(state["rng"])
        if main_process:
            print(f"resumed from {output} at step {step}")
    wrapped = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    amp = device.type == "cuda" and not settings.get("no_amp")
    progress = tqdm(total=total_steps, initial=step, desc="train", disable=not main_process or settings.get("quiet"))
    model.train()
    last = {}
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.epoch = epoch
        for index, batch in enumerate(loader):
            if index < skip:  # resuming inside an epoch: the same batches as an uninterrupted run
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                extra = {"answer": batch["answer"].to(device)} if task == "qa" else {}
                parts = wrapped(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                batch["pixel_values"].to(device), batch["frame_mask"].to(device),
                                gather=distributed.gather_with_grad if world > 1 else None, **extra)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if settings.get("debug_dump") and step == 0:
                _dump(settings["debug_dump"], model, parts, rank)
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
            optimizer.step()
            scheduler.step()
            step += 1
            last = {k: float(v.detach()) for k, v in parts.items()}
            progress.update(1)
            progress.set_postfix(loss=f"{last['loss']:.3f}")
            if main_process and settings.get("save_every") and step % settings["save_every"] == 0:
                _save(output, model, optimizer, scheduler, step)
            if step >= total_steps or step == settings.get("stop_after"):
                break
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
                print(format_table(metrics, f"test set: {len(test_set)} pairs (chance R@1 = "
                                            f"{100 / len(test_set):.2f}%)"))
            results["metrics"] = metrics
        with open(os.path.join(output, "results.json"), "w") as handle:
            json.dump(results, handle, indent=1)
    distributed.cleanup()
    return model, results


def _save(output, model, optimizer, scheduler, step):
    checkpoint.save(output, model, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "step": step, "rng": torch.get_rng_state()})


def _dump(path, model, parts, rank):
    """The first step's loss and gradients, for the multi-process equivalence test."""
    if rank == 0:
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": parts["loss"].detach(), "grads": grads}, path)
