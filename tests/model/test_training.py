"""A training step lowers the loss; checkpoints resume to the same result; two torchrun processes on the
CPU (gloo) give the loss and gradients of one process on the whole batch; the CLI runs end to end."""

import os
import socket
import subprocess
import sys

import torch

from hbi_model import build, checkpoint
from hbi_model.cli import DEFAULTS
from hbi_model.data import collate
from hbi_model.train import train

SMALL = dict(
    DEFAULTS,
    num_train=16,
    num_test=8,
    batch_size=4,
    max_words=16,
    max_frames=6,
    tiny_width=16,
    tiny_layers=1,
    temporal_layers=1,
    temporal_heads=2,
    attention_heads=2,
    banzhaf_samples=8,
    exact_max_players=14,
    quiet=True,
    workers=0,
    save_every=0,
    clip_lr_scale=1.0,
)


def test_a_training_step_lowers_the_loss():
    torch.manual_seed(0)
    tokenizer, model = build.model(SMALL)
    train_set, _ = build.datasets(SMALL)
    batch = collate([train_set[i] for i in range(4)], tokenizer, SMALL["max_words"])
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["frame_mask"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = model(*args)
    assert set(first) >= {
        "loss",
        "contrastive/entity",
        "contrastive/action",
        "contrastive/event",
        "banzhaf/entity",
        "banzhaf/action",
        "banzhaf/event",
        "cross_level_kl",
    }
    for _ in range(5):
        loss = model(*args)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(model(*args)["loss"].detach()) < float(first["loss"].detach())


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_save_and_resume_continue_identically(tmp_path):
    straight, _ = train(dict(SMALL, output=str(tmp_path / "straight"), max_steps=4, skip_eval=True))
    train(dict(SMALL, output=str(tmp_path / "resumed"), max_steps=4, stop_after=2, skip_eval=True))
    assert checkpoint.exists(tmp_path / "resumed")
    resumed, _ = train(dict(SMALL, output=str(tmp_path / "resumed"), max_steps=4, skip_eval=True))
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_two_processes_match_one_on_the_whole_batch(tmp_path):
    common = [
        "--num-train",
        "8",
        "--num-test",
        "4",
        "--batch-size",
        "8",
        "--max-words",
        "16",
        "--max-frames",
        "6",
        "--tiny-width",
        "16",
        "--tiny-layers",
        "1",
        "--temporal-layers",
        "1",
        "--temporal-heads",
        "2",
        "--attention-heads",
        "2",
        "--exact-max-players",
        "14",
        "--max-steps",
        "1",
        "--quiet",
        "--save-every",
        "0",
        "--clip-lr-scale",
        "1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = tmp_path / "one.pt"
    two = tmp_path / "two.pt"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hbi_model.cli",
            "train",
            "--output",
            str(tmp_path / "a"),
            "--debug-dump",
            str(one),
            *common,
        ],
        check=True,
        env=env,
        timeout=600,
    )
    with socket.socket() as probe:  # a free port: another run on this machine may hold a fixed one
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            "-m",
            "hbi_model.cli",
            "train",
            "--output",
            str(tmp_path / "b"),
            "--debug-dump",
            str(two),
            *common,
        ],
        check=True,
        env=env,
        timeout=600,
    )
    single, double = torch.load(one), torch.load(two)
    # The global batch holds the same pairs in another order (rank 0's, then rank 1's); every loss
    # term is invariant to the order of the pairs (the teacher is exact: no seed), so they match.
    torch.testing.assert_close(double["loss"], single["loss"], rtol=1e-5, atol=1e-6)
    assert single["grads"].keys() == double["grads"].keys()
    for name in single["grads"]:
        # float32 sums in another order: an error relative to the tensor's largest entry, not to each entry
        scale = max(1.0, float(single["grads"][name].abs().max()))
        torch.testing.assert_close(double["grads"][name], single["grads"][name], rtol=1e-3, atol=1e-5 * scale, msg=name)


def test_cli_train_eval_explain(tmp_path):
    args = [
        "--output",
        str(tmp_path / "run"),
        "--num-train",
        "16",
        "--num-test",
        "8",
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--tiny-width",
        "16",
        "--tiny-layers",
        "1",
        "--temporal-layers",
        "1",
        "--temporal-heads",
        "2",
        "--attention-heads",
        "2",
        "--quiet",
    ]

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "hbi_model.cli", *a], check=True, capture_output=True, text=True, timeout=600
        ).stdout

    assert "R@1" in run("train", *args)
    assert "text-to-video" in run("eval", *args)
    png = tmp_path / "map.png"
    assert "wrote" in run("explain", *args, "--png", str(png))
    assert png.stat().st_size > 1000


def test_a_pretrained_estimator_can_be_the_teacher(tmp_path):
    from hbi_model.heads import BanzhafEstimator

    weights = tmp_path / "estimator.pt"
    torch.save({f"banzhafteacher.{k}": v for k, v in BanzhafEstimator().state_dict().items()}, weights)
    _, results = train(
        dict(SMALL, output=str(tmp_path / "run"), max_steps=1, skip_eval=True, teacher_weights=str(weights))
    )
    assert torch.isfinite(torch.tensor(results["last_losses"]["banzhaf/entity"]))


def test_events_training_batches_are_whole_groups():
    from hbi_model import build, train
    from hbi_model.data.events import GROUP, SyntheticEvents

    settings = dict(seed=3, batch_size=8, no_shuffle=False)
    order = list(iter(train.training_sampler(SyntheticEvents(32, seed=0), settings)))
    assert sorted(order) == list(range(32))
    for k in range(0, 32, GROUP):  # batches of 8 are two such runs: every clip meets its three negatives
        run = order[k : k + GROUP]
        assert sorted(run) == list(range(run[0] // GROUP * GROUP, run[0] // GROUP * GROUP + GROUP))
    shapes = build.datasets(dict(data="shapes", num_train=8, num_test=4, max_frames=6, seed=0))[0]
    assert isinstance(train.training_sampler(shapes, settings), train.EpochSampler)
