"""Training progress: on a terminal a bar with the loss and steps per second; in a log (stdout not a
terminal) one plain line per epoch instead, which a log keeps readable where a bar's redraws are not."""

import datetime
import sys
import time

from tqdm import tqdm

BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"


class TrainingProgress:
    def __init__(self, total_steps, num_epochs, initial_step=0, enabled=True):
        self.total_steps, self.num_epochs = total_steps, num_epochs
        interactive = enabled and sys.stdout.isatty()
        self.lines = enabled and not interactive
        self.bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc="train",
            unit=" steps",
            bar_format=BAR_FORMAT,
            disable=not interactive,
        )
        self.started = time.monotonic()
        self._new_epoch()

    def _new_epoch(self):
        self.epoch_losses, self.epoch_started = [], time.monotonic()

    def step(self, loss):
        self.epoch_losses.append(loss)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}")

    def restart(self, step):
        """Training went back to `step` (a retry from a checkpoint): the steps since are undone."""
        self.bar.n = step
        self.bar.refresh()
        self._new_epoch()

    def end_epoch(self, epoch, step):
        """epoch: 0-based; step: steps done so far. Prints the epoch's line (in a log) if it ran steps."""
        if self.lines and self.epoch_losses:
            now = time.monotonic()
            mean = sum(self.epoch_losses) / len(self.epoch_losses)
            rate = len(self.epoch_losses) / max(now - self.epoch_started, 1e-9)
            elapsed = datetime.timedelta(seconds=int(now - self.started))
            print(
                f"epoch {epoch + 1}/{self.num_epochs}: steps {step}/{self.total_steps}, mean loss {mean:.4f}, "
                f"{rate:.2f} steps/s, elapsed {elapsed}",
                flush=True,
            )
        self._new_epoch()

    def close(self):
        self.bar.close()
