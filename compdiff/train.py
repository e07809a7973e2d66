"""The trainer: ``train(config, workdir)`` fits ``config``'s task and checkpoints as it goes.

One loop for every task (:mod:`compdiff.training.tasks`: the data, network and loss of
``config.task``); the train state, Adam and the bias-corrected EMA are
:mod:`compdiff.training.state`; what a run writes as it goes is
:mod:`compdiff.training.writers`; loading what it trained is
:mod:`compdiff.models.loading` (which needs no trainer).

Data parallelism: parameters are replicated, every batch is sharded over all
devices on its batch axis (``NamedSharding``), and XLA all-reduces the
gradients; the state's buffers are donated to the step. In a multi-host run
(:mod:`compdiff.distributed`) "all devices" are every process's: each process
computes its rows of the same global batch, every process saves and restores
the checkpoints with orbax, and process 0 alone writes config.json,
metrics.jsonl and tb/ (docs/multihost.md).

The randomness of step ``n`` is ``fold_in(data_key, n)``, so a run that is
killed and resumed from a checkpoint ends bit-identical to one that was not
(on the same devices: another device count changes reduction order).

Work directory::

    config.json      the config of the latest (re)start, resolved so that it rebuilds the
                     model without the data (:func:`compdiff.models.loading.load_model`):
                     ``model.dim`` holds the data's dimension, next to the network
                     (``model.*``), parameterization and schedule; ``data.path`` is
                     absolute, and ``data.dataset`` is "" when a path was given
    metrics.jsonl    one JSON line per log: step, loss, steps_per_sec, examples_per_sec,
                     elapsed_s
    tb/              the same scalars (and ``lr``) as TensorBoard event files, tags
                     ``train/<name>`` (tensorboardX, no TensorFlow): ``tensorboard --logdir``
    checkpoints/N/   orbax checkpoints of the TrainState after N steps (the last few)
    checkpoints/N.corrupt/   a checkpoint that did not restore, moved aside (never deleted)
                     when an older one did, so that the run resumes and may save step N
                     again (``N.corrupt.2``, ... if the name is taken)
    LOCK, LOCK.<i>   flock'ed by the training that uses the directory (process 0, process i
                     of a multi-host run), with its pid, host
                     and start time; empty when free (:mod:`compdiff.workdir`)

Surviving a kill (kill -9 included) at any moment:

- a second process on the directory fails at once (:class:`compdiff.workdir.WorkdirInUse`),
  and the lock of a killed one is taken over with a warning;
- orbax saves checkpoint N into ``N.orbax-checkpoint-tmp-<time>`` and renames it to ``N``
  once complete (``AtomicRenameTemporaryPath``, orbax's default on a local file system); the
  step listing ignores unrenamed ones and the next run deletes them first thing, so a kill
  mid-save loses that save only;
- ``config.json`` and the truncation of ``metrics.jsonl`` are written to a ``.tmp`` file
  and renamed, and a metrics line torn by a kill is dropped when resuming;
- resuming restores the newest checkpoint that restores (a damaged one: a warning line,
  moved aside, the next older one; none: one ValueError naming each one's reason) and drops
  the metrics lines after it, so the metrics log every step once and the run ends
  bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding

# ``sculpt`` registers the sculpt_classifier task (compdiff.training.tasks): a config may
# name it.
from compdiff import checkpoints, distributed, schedules, sculpt  # noqa: F401
from compdiff import workdir as workdir_lib
from compdiff.data import images, points
from compdiff.models import loading
from compdiff.models.diffusion import LinenApply
from compdiff.training import state as state_lib
from compdiff.training import tasks, writers
from compdiff.training.state import TrainState

# Config sections that fix what a checkpoint means; resuming with others is an error.
_MODEL_SECTIONS = ("data", "model", "schedule")


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint if there is one.

    Resumes from the newest checkpoint that restores: newer ones that do not
    are moved aside as ``N.corrupt`` with a warning, and metrics.jsonl drops
    the lines after the step resumed from. Holds the work directory's lock
    (:mod:`compdiff.workdir`) throughout: raises
    :class:`~compdiff.workdir.WorkdirInUse` at once if another live process
    holds it. Returns the final :class:`TrainState`; a finished run returns
    its last checkpoint without training.
    """
    workdir = os.path.abspath(workdir)
    tc = config.train
    num_devices = jax.device_count()
    if tc.batch_size % num_devices:
        raise ValueError(f"batch_size {tc.batch_size} must divide over {num_devices} devices")
    if not 0.0 <= tc.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {tc.ema_decay}")
    task = tasks.get_task(config)
    schedule = tasks.make_schedule(config)
    data = task.data(config, schedule)
    config = tasks.resolve_config(config, data)
    network = task.network(config, None)

    # Before the manager, whose cleanup deletes tmp saves. One lock file per process, so
    # the processes of one multi-host run share the directory and a second run fails.
    with workdir_lib.lock(workdir, process=jax.process_index()):
        return _train_locked(config, workdir, schedule, data, network, task.loss(config))


def _check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
    """A restart may change ``train.*`` (e.g. more steps), never what the weights mean.

    ``config`` is resolved (:func:`~compdiff.training.tasks.resolve_config`); so the data
    section compares the absolute points path. A config saved before ``data.path`` and
    ``model.dim`` existed compares with their values for its built-in dataset.
    """
    old = loading.read_config(workdir)
    saved = old.to_dict()
    if not saved.setdefault("data", {}).get("source"):
        saved["data"].setdefault("path", "")
    if "dim" not in saved.setdefault("model", {}):
        try:
            saved["model"]["dim"] = tasks.model_dim(old)
        except (ValueError, AttributeError):
            pass  # left out: reported as different model settings below
    new = json.loads(config.to_json())  # as saved: tuples become lists
    changed = [s for s in _MODEL_SECTIONS if saved.get(s) != new.get(s)]
    if changed:
        raise ValueError(
            f"{workdir} holds a run with different {', '.join(changed)} settings "
            f"(see {loading.config_path(workdir)}); use a new workdir")


def _train_locked(config: ml_collections.ConfigDict, workdir: str,
                  schedule: schedules.Schedule, data: tasks.Data, network: nn.Module,
                  loss: tasks.Loss) -> TrainState:
    """:func:`train` once it holds the work directory's lock."""
    tc = config.train
    replicated = state_lib.replicated()
    if isinstance(data, points.Points):  # on every device once, not copied there every step
        data = jax.device_put(data, replicated)
    init_key, data_key = jax.random.split(jax.random.key(tc.seed))
    if distributed.is_main():
        checkpoints.remove_unfinished_saves(workdir)
    distributed.sync("compdiff.train: unfinished saves removed")
    manager: ocp.CheckpointManager | None = checkpoints.open_manager(
        workdir, keep=tc.keep_checkpoints)
    try:
        if manager.latest_step() is None:
            state = state_lib.init_state(config, network, init_key)
        else:
            _check_resumable(workdir, config)
            manager.close()  # a fresh one comes back: see checkpoints.restore_newest
            manager = None
            manager, latest, state = checkpoints.restore_newest(
                workdir, state_lib.abstract_state(config, network), replicated,
                keep=tc.keep_checkpoints)
            logging.info("Resuming from step %d (%s)", latest, manager.directory)
        state = jax.device_put(state, replicated)
        start = int(state.step)
        if distributed.is_main():
            writers.write_atomically(loading.config_path(workdir), config.to_json(indent=2))
            writers.truncate_metrics(workdir, start)
        if start >= tc.steps:
            logging.info("Nothing to do: %s already trained for %d steps", workdir, start)
            return state
        batch_sharding = state_lib.batch_sharding()
        step_fn = functools.partial(
            _train_step, network=network, loss=loss, batch_size=tc.batch_size, lr=tc.lr,
            grad_clip=tc.grad_clip, ema_decay=tc.ema_decay, sharding=batch_sharding)
        if isinstance(data, images.ImageSource):
            batches = data.batches(tc.batch_size, tc.seed, batch_sharding).iterate(start)
            data = None
        else:
            batches = itertools.repeat(None)
        hook = _sample_grid_hook(config, network, workdir)
        with writers.TrainingLog(workdir, start, tc.steps, tc.batch_size, tc.lr) as log:
            return _run(state, step_fn, data_key, data, batches, schedule, manager, tc, start,
                        log, hook)
    finally:
        if manager is not None:
            # Also on Ctrl-C: let an in-flight save finish so the next run resumes from it.
            manager.wait_until_finished()
            manager.close()


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=(
    "network", "loss", "batch_size", "lr", "grad_clip", "ema_decay", "sharding"))
def _train_step(state: TrainState, data_key: jax.Array, data: tasks.Data | None,
                schedule: schedules.Schedule, batch: dict | None = None, *, network: nn.Module,
                loss: tasks.Loss, batch_size: int, lr: float, grad_clip: float,
                ema_decay: float, sharding: NamedSharding) -> tuple[TrainState, jax.Array]:
    """One update of ``loss`` on ``batch`` (from the host) or on ``data`` (an oracle or
    :class:`~compdiff.data.points.Points`, a traced argument, sampled by the loss on the
    devices)."""
    k_data, k_loss = jax.random.split(jax.random.fold_in(data_key, state.step))
    inputs = tasks.StepInputs(ema_params=state.ema_params, apply_fn=LinenApply(network),
                              schedule=schedule, data=data, batch=batch, data_key=k_data,
                              loss_key=k_loss, batch_size=batch_size, sharding=sharding)
    value, grads = jax.value_and_grad(loss)(state.params, inputs)
    return state_lib.apply_update(state, grads, lr=lr, grad_clip=grad_clip,
                                  ema_decay=ema_decay), value


def _run(state: TrainState, step_fn: Callable, data_key: jax.Array, data: tasks.Data | None,
         batches: Iterator, schedule: schedules.Schedule, manager: ocp.CheckpointManager,
         tc: ml_collections.ConfigDict, start: int, log: writers.TrainingLog,
         hook: Callable[[TrainState, int], None] | None = None) -> TrainState:
    """Steps ``start + 1 .. tc.steps`` with logging, checkpoints and the periodic ``hook``."""
    t_start = time.time()
    t_window, timed, losses = t_start, 0, []
    lockstep = distributed.one_step_in_flight()
    for step in range(start + 1, tc.steps + 1):
        state, loss = step_fn(state, data_key, data, schedule, next(batches))
        if lockstep:
            jax.block_until_ready(loss)
        losses.append(loss)
        timed += 1
        if step == start + 1:  # keep compilation out of the steps/s figures
            jax.block_until_ready(loss)
            logging.info("Compiled and ran step %d in %.1fs", step, time.time() - t_start)
            t_window, timed = time.time(), 0
        if step % tc.log_every == 0 or step == tc.steps:
            jax.block_until_ready(loss)  # steps are dispatched ahead: time them done
            log.write(step, losses, timed / max(time.time() - t_window, 1e-9),
                      time.time() - t_start)
            t_window, timed, losses = time.time(), 0, []
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            state_lib.save(manager, step, state)
        if hook is not None and (step % tc.get("sample_every", 0) == 0 or step == tc.steps):
            hook(state, step)
    logging.info("Done: %d steps in %.1fs; checkpoints in %s", tc.steps - start,
                 time.time() - t_start, manager.directory)
    return state


def _sample_grid_hook(config: ml_collections.ConfigDict, network: nn.Module, workdir: str
                      ) -> Callable[[TrainState, int], None] | None:
    """For image diffusion models with ``train.sample_every > 0``: writes
    ``samples/step_N.png``, reverse-diffusion samples of the EMA model (conditioned
    on ``train.grid_conditions`` when the model is conditional), or ``None``."""
    if (tasks.task_name(config) != "diffusion" or config.model.get("network", "mlp") != "unet"
            or not config.train.get("sample_every", 0)):
        return None
    # Imported here, not at the top: image_grids needs matplotlib, which training without
    # sample grids (every other run) never loads.
    from compdiff import image_grids

    if jax.process_count() > 1:  # the grid samples on process 0 alone, which would hang
        logging.warning("train.sample_every: sample grids are not drawn in a multi-process run")
        return None

    def hook(state: TrainState, step: int) -> None:
        model = loading.build_model(config, state.ema_params)
        image_grids.save_model_grid(model, tuple(config.model.image_shape),
                                    os.path.join(workdir, "samples", f"step_{step}.png"),
                                    seed=config.train.seed)
    return hook
