"""What a training run writes as it goes: metrics.jsonl, TensorBoard and the console.

Every ``train.log_every`` steps (and at the last) one record of the steps since the last
one: ``step``, the mean ``loss``, ``steps_per_sec``, ``examples_per_sec`` and
``elapsed_s``:

- the console (absl INFO, every process): ``step n/N  loss  steps/s  examples/s  ETA``,
  the ETA being the steps left at the window's rate;
- ``metrics.jsonl`` (process 0): the record as one JSON line;
- ``tb/`` (process 0): the same scalars and ``lr`` as TensorBoard event files, tags
  ``train/<name>`` (tensorboardX, no TensorFlow: ``tensorboard --logdir``).

Resuming from step ``s`` drops what was written after ``s`` (:func:`truncate_metrics`,
and TensorBoard's purge step), so the outputs log every step once. Files that a kill must
not leave half-written are replaced atomically (:func:`write_atomically`).
"""

from __future__ import annotations

import json
import logging as std_logging
import os
from typing import Any

import jax.numpy as jnp
from absl import logging

from compdiff import distributed

Array = jnp.ndarray
METRICS = "metrics.jsonl"
TB_DIR = "tb"


def write_atomically(path: str, text: str) -> None:
    """Replaces ``path`` by ``text`` all at once: a kill leaves the old file or the new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_metrics(workdir: str, record: dict) -> None:
    """Appends ``record`` to ``workdir/metrics.jsonl`` as one JSON line."""
    with open(os.path.join(workdir, METRICS), "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(workdir: str, step: int) -> None:
    """Drops lines logged after the checkpoint we resume from (a kill loses those steps)."""
    path = os.path.join(workdir, METRICS)
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by a kill mid-write (the last one): drop it
                continue
            if record["step"] <= step:
                kept.append(json.dumps(record) + "\n")
    write_atomically(path, "".join(kept))


def open_board(workdir: str, start: int) -> Any:
    """Process 0's TensorBoard writer on ``workdir/tb`` (None on other processes).

    tensorboardX writes event files without TensorFlow. A resumed run purges
    the points an earlier run logged after ``start`` (TensorBoard drops them
    when it reads the file), as :func:`truncate_metrics` drops their lines.
    The file name carries ``start``: tensorboardX names files by the second,
    so a resume within the same second would otherwise overwrite the first
    run's file (a later run from the same ``start`` purges those points anyway).
    """
    if not distributed.is_main():
        return None
    # Imported here, not at the top: only process 0 of a training writes event files, and
    # nothing else in the package (loading a model, sampling) needs tensorboardX.
    import tensorboardX

    return tensorboardX.SummaryWriter(os.path.join(workdir, TB_DIR),
                                      purge_step=start + 1 if start else None,
                                      filename_suffix=f".from_step{start}")


class TrainingLog:
    """The console line, metrics.jsonl record and TensorBoard scalars of a run in
    ``workdir`` from step ``start`` to ``steps`` (a context manager: closes the board)."""

    def __init__(self, workdir: str, start: int, steps: int, batch_size: int,
                 lr: float | None = None):
        self.workdir, self.steps, self.batch_size, self.lr = workdir, steps, batch_size, lr
        self.board = open_board(workdir, start)

    def __enter__(self) -> TrainingLog:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def write(self, step: int, losses: list[Array], rate: float, elapsed: float) -> None:
        """Logs the steps since the last log: their mean loss, ``rate`` (steps/s) and the
        ETA at that rate; ``elapsed``: seconds since the run (re)started."""
        loss = float(jnp.mean(jnp.stack(losses)))
        eta = f"{(self.steps - step) / rate:.0f}s" if rate > 0 else "?"
        logging.info("step %d/%d  loss %.4f  %.2f steps/s  %.0f examples/s  ETA %s", step,
                     self.steps, loss, rate, rate * self.batch_size, eta)
        if not distributed.is_main():
            return
        record = {"step": step, "loss": loss, "steps_per_sec": rate,
                  "examples_per_sec": rate * self.batch_size, "elapsed_s": elapsed}
        write_metrics(self.workdir, record)
        if self.board is not None:
            scalars = {k: v for k, v in record.items() if k not in ("step", "elapsed_s")}
            if self.lr is not None:
                scalars["lr"] = self.lr
            for name, value in scalars.items():
                self.board.add_scalar(f"train/{name}", value, step)
            self.board.flush()


def quiet_orbax_logs() -> None:
    """Hides orbax's INFO lines from the absl console handler (entrypoints call this).

    Orbax logs every phase of every save at INFO, which buries the progress lines.
    """
    def keep(record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname

    logging.get_absl_handler().addFilter(keep)
