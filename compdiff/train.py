"""Training library: denoising loss, Adam + EMA, orbax checkpoints that resume.

The loss is the same for every parameterization (docs/design.md section 1):

    L(theta) = E_{x_0, t ~ U{1..T}, eps ~ N(0, I)} ||eps - eps_hat_theta(x_t, t)||^2,
    x_t = sqrt(abar_t) x_0 + sigma_t eps,

with ``x_0`` drawn afresh every step: exact samples of a built-in toy oracle
(``data.dataset``, :mod:`compdiff.data.toy2d`), minibatches of the user's
own points (``data.path``, an ``[n, d]`` array in a ``.npz`` file, drawn with
replacement, :mod:`compdiff.data.points`), or an image dataset (``data.source``,
a tfds builder such as ``clevr_positions`` read through grain,
:mod:`compdiff.data.images`); ``data.source`` overrides ``data.path``, which
overrides ``data.dataset``. Updates are Adam after clipping the global
gradient norm.

Conditional models (``model.cond_dim > 0``) read each example's condition
vector, replaced by the null condition with probability ``train.cond_dropout``
(classifier-free guidance, :mod:`compdiff.models.conditioning`). The same loop
trains classifiers (``task = "classifier"``): logistic loss on ``label`` (one
output), cross-entropy (several) or one logistic loss per output on multi-hot ``labels``
(multi-label), on clean images or, when the classifier is
noise-conditional, on ``x_t`` at a uniform level. The network is
``model.network``: ``mlp`` (:class:`ResidualMLP`), ``unet`` (:class:`UNet`) or
``classifier`` (:class:`ImageClassifier`).

Data parallelism: parameters are replicated, every batch is sharded over all
devices on its batch axis (``NamedSharding``), and XLA all-reduces the
gradients; the state's buffers are donated to the step. In a multi-host run
(:mod:`compdiff.distributed`) "all devices" are every process's: each process
computes its rows of the same global batch, every process saves and restores
the checkpoints with orbax, and process 0 alone writes config.json,
metrics.jsonl and tb/ (docs/multihost.md).

The model one normally samples from is the bias-corrected EMA of the
parameter iterates ``params_1 .. params_n`` (the ``n`` updates so far),
corrected as Adam corrects its moments:

    ema_n = sum_{k=1..n} (1 - d) d^(n-k) params_k / (1 - d^n),

a convex combination with no weight on the random initialization (the
plain ``ema <- d ema + (1 - d) params`` started at the init keeps weight
``d^n`` on it: 5% after 3000 steps at ``d = 0.999``). The state holds the
corrected ``ema_n`` itself, updated as

    ema_n = w_n ema_(n-1) + (1 - w_n) params_n,    w_n = d (1 - d^(n-1)) / (1 - d^n),

which is the biased recurrence ``m_n = d m_(n-1) + (1 - d) params_n``,
``m_0 = 0``, divided by ``1 - d^n``. ``w_1 = 0``, so ``ema_1 = params_1``
whatever ``ema_0`` holds; the update needs only the step count, so the
checkpoint layout is unchanged (a run started before this correction resumes,
and keeps the old init weight, shrinking as ``d^n``).

The randomness of step ``n`` is ``fold_in(data_key, n)``, so a run that is
killed and resumed from a checkpoint ends bit-identical to one that was not
(on the same devices: another device count changes reduction order).

Work directory::

    config.json      the config of the latest (re)start, resolved so that it rebuilds the
                     model without the data (:func:`load_model`, :func:`build_model`):
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
import logging as std_logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from compdiff import checkpoints, distributed, schedules, sculpt
from compdiff import workdir as workdir_lib
from compdiff.compose import Density
from compdiff.data import images, points, toy2d
from compdiff.models import conditioning
from compdiff.models.classifier import ImageClassifier
from compdiff.models.diffusion import ApplyFn, DiffusionModel, LinenApply, predict
from compdiff.models.mlp import ResidualMLP
from compdiff.models.unet import UNet

Array = jnp.ndarray
# Config sections that fix what a checkpoint means; resuming with others is an error.
_MODEL_SECTIONS = ("data", "model", "schedule")
TASKS = ("diffusion", "classifier", "sculpt_classifier")
NETWORKS = ("mlp", "unet", "classifier", "sculpt_classifier")
Network = ResidualMLP | UNet | ImageClassifier


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar: number of updates applied
    params: Any
    ema_params: Any
    opt_state: Any


# --- building blocks from a config ---------------------------------------------------------
def make_schedule(config: ml_collections.ConfigDict) -> schedules.Schedule:
    return schedules.get(config.schedule.name, config.schedule.num_levels)


def task(config: ml_collections.ConfigDict) -> str:
    name = config.get("task", "diffusion")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {list(TASKS)}")
    return name


def make_data(config: ml_collections.ConfigDict, schedule: schedules.Schedule
              ) -> Density | points.Points | images.ImageSource:
    """The training data: ``data.source`` (images), else ``data.path``, else ``data.dataset``.

    Points and oracles are pytrees with ``.dim`` and ``.sample(key, num) ->
    [num, dim]``, sampled on the devices inside the step; an image source
    feeds batches from the host (:class:`compdiff.data.images.ImageSource`).
    """
    d = config.data
    if task(config) == "sculpt_classifier":  # the base oracles (compdiff.sculpt)
        return sculpt.bases_from_config(config, schedule)
    if d.get("source", ""):
        return images.ImageSource.from_config(d)
    path = d.get("path", "")
    return points.load(path) if path else toy2d.get(d.dataset, schedule)


def data_name(config: ml_collections.ConfigDict) -> str:
    """The data's label: the image builder, the points file's stem, or the dataset's name."""
    d = config.data
    if d.get("source", ""):
        return f"{d.source}/{d.builder_config}"
    path = d.get("path", "")
    return os.path.splitext(os.path.basename(path))[0] if path else d.dataset


def model_dim(config: ml_collections.ConfigDict) -> int:
    """The model's dimension: ``model.dim``, stored by :func:`train` in the saved config.

    A config without it (one saved before ``model.dim`` was stored, or a
    built-in config before training) falls back to its built-in dataset.
    """
    dim = config.model.get("dim")
    if dim:
        return int(dim)
    path, dataset = config.data.get("path", ""), config.data.get("dataset", "")
    if not path and dataset in toy2d.names():
        return toy2d.get(dataset, make_schedule(config)).dim
    source = f"points file {path}" if path else f"dataset {dataset!r}, which is not built in"
    raise ValueError(f"the config has no model.dim, the data dimension, and its data is the "
                     f"{source}; set model.dim")


def make_network(config: ml_collections.ConfigDict, dim: int | None = None) -> Network:
    """The network of ``config`` over ``R^dim`` (default: :func:`model_dim`).

    ``model.network`` picks it (default ``mlp``). Images need ``model.image_shape``,
    stored by :func:`resolve_config`. ``model.widen`` / ``model.norm`` default to
    1 / ``"none"``: configs saved before those fields existed rebuild the network
    they were trained with.
    """
    m = config.model
    kind = m.get("network", "mlp")
    if kind not in NETWORKS:
        raise ValueError(f"unknown model.network {kind!r}; known: {list(NETWORKS)}")
    if kind == "sculpt_classifier":
        return sculpt.network_from_config(config, model_dim(config) if dim is None else dim)
    if kind != "mlp":
        shape = tuple(m.get("image_shape") or ())
        if len(shape) != 3:
            raise ValueError(f"model.network={kind} needs model.image_shape (H, W, C), got "
                             f"{m.get('image_shape')}; it is set from image data")
    if kind == "unet":
        return UNet(image_shape=shape, num_levels=config.schedule.num_levels,
                    channels=m.channels, channel_mult=tuple(m.channel_mult),
                    num_res_blocks=m.num_res_blocks,
                    attention_resolutions=tuple(m.attention_resolutions),
                    num_heads=m.get("num_heads", 4), cond_dim=m.get("cond_dim", 0),
                    remat=m.get("remat", False), position_map=m.get("position_map", 0.0),
                    cond_shift=tuple(m.get("cond_shift") or ()),
                    cond_scale=tuple(m.get("cond_scale") or ()))
    if kind == "classifier":
        return ImageClassifier(image_shape=shape, num_outputs=m.num_outputs,
                               channels=m.channels, channel_mult=tuple(m.channel_mult),
                               query=m.get("query", "none"),
                               num_levels=config.schedule.num_levels if m.get(
                                   "noise_conditional", False) else 0)
    return ResidualMLP(dim=model_dim(config) if dim is None else dim, hidden=m.hidden,
                       num_blocks=m.num_blocks, time_embedding=m.time_embedding,
                       num_levels=config.schedule.num_levels, widen=m.get("widen", 1),
                       norm=m.get("norm", "none"))


def build_model(config: ml_collections.ConfigDict, params: Any) -> DiffusionModel:
    """The :class:`DiffusionModel` of ``config`` with network parameters ``params``.

    Needs no data: the dimension is ``model.dim`` (see :func:`model_dim`).
    """
    if task(config) != "diffusion":
        raise ValueError(f"the run is a {task(config)}, not a diffusion model")
    dim = model_dim(config)
    return DiffusionModel(apply_fn=LinenApply(make_network(config, dim)), params=params,
                          schedule=make_schedule(config),
                          parameterization=config.model.parameterization, dim=dim,
                          name=f"{data_name(config)}/{config.model.parameterization}",
                          cond_dim=config.model.get("cond_dim", 0))


def resolve_config(config: ml_collections.ConfigDict,
                   data: Density | points.Points) -> ml_collections.ConfigDict:
    """``config`` as :func:`train` saves it: ``model.dim`` from ``data``, ``data.path`` absolute.

    Image data also sets ``model.image_shape``, and with ``model.standardize_cond`` the
    condition statistics ``model.cond_shift`` / ``model.cond_scale`` the UNet standardizes
    its conditions by (:meth:`~compdiff.data.images.ImageSource.condition_stats`; kept when
    the config states them). A path replaces the dataset, so ``data.dataset`` becomes "" (the saved
    config names only the data it was trained on).
    """
    resolved = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
    stated = resolved.model.get("dim")
    if stated and stated != data.dim:
        raise ValueError(f"config model.dim is {stated} but the data ({data_name(config)}) "
                         f"has dimension {data.dim}")
    resolved.model.dim = data.dim
    if isinstance(data, images.ImageSource):
        resolved.model.image_shape = list(data.image_shape)
        stated_c = resolved.model.get("cond_dim", 0)
        if task(config) == "diffusion" and stated_c and stated_c != data.cond_dim:
            raise ValueError(f"config model.cond_dim is {stated_c} but the data's conditions "
                             f"have length {data.cond_dim}")
        if resolved.model.get("standardize_cond") and not resolved.model.get("cond_shift"):
            shift, scale = data.condition_stats()
            resolved.model.cond_shift = [float(v) for v in shift]
            resolved.model.cond_scale = [float(v) for v in scale]
        resolved.data.data_dir = os.path.abspath(os.path.expanduser(data.data_dir))
        return resolved
    path = config.data.get("path", "")
    resolved.data.path = os.path.abspath(os.path.expanduser(path)) if path else ""
    if path:
        resolved.data.dataset = ""
    return resolved


def _optimizer(lr: float, grad_clip: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(lr))


def init_state(config: ml_collections.ConfigDict, network: Network, key: Array) -> TrainState:
    return _init_state(key, network=network, lr=config.train.lr,
                       grad_clip=config.train.grad_clip,
                       cond_dim=_network_cond_dim(config))


def _network_cond_dim(config: ml_collections.ConfigDict) -> int:
    """Length of the condition vectors the network reads (0: none)."""
    if config.model.get("network", "mlp") == "classifier":
        return 2 if config.model.get("query", "none") == "position" else 0
    return config.model.get("cond_dim", 0)


# Compiled as one program (eagerly, every initializer op would compile on its own) and
# cached on the hashable network and hyperparameters.
@functools.partial(jax.jit, static_argnames=("network", "lr", "grad_clip", "cond_dim"))
def _init_state(key: Array, *, network: Network, lr: float, grad_clip: float,
                cond_dim: int = 0) -> TrainState:
    x = jnp.zeros((1, network.dim), jnp.float32)
    cond = conditioning.given(jnp.zeros((1, cond_dim))) if cond_dim else None
    params = network.init(key, x, jnp.ones((1,), jnp.int32), cond)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=_optimizer(lr, grad_clip).init(params))


def _ema_weight(step: Array, decay: float) -> Array:
    """``w_n = d (1 - d^(n-1)) / (1 - d^n)`` of the bias-corrected EMA at update ``n = step``."""
    if decay == 0.0:
        return jnp.zeros((), jnp.float32)
    n, log_d = step.astype(jnp.float32), math.log(decay)
    # 1 - d^k as -expm1(k log d): no cancellation for d near 1; expm1(0) = 0 makes w_1 exact.
    return decay * jnp.expm1((n - 1.0) * log_d) / jnp.expm1(n * log_d)


# --- the step ------------------------------------------------------------------------------
def loss_fn(params: Any, apply_fn: ApplyFn, parameterization: str, schedule: schedules.Schedule,
            x0: Array, key: Array, cond: conditioning.Conditions | None = None) -> Array:
    """Monte Carlo estimate of ``L(theta)`` on the batch ``x0`` (mean over samples)."""
    k_t, k_eps = jax.random.split(key)
    t = jax.random.randint(k_t, x0.shape[:1], 1, schedule.num_levels + 1)
    eps = jax.random.normal(k_eps, x0.shape)
    x_t = jnp.sqrt(schedule.abar[t])[:, None] * x0 + schedule.sigma[t][:, None] * eps
    _, eps_hat = predict(apply_fn, params, parameterization, x_t, t, cond)
    return jnp.mean(jnp.sum((eps - eps_hat) ** 2, axis=-1))


def classifier_loss(params: Any, apply_fn: ApplyFn, schedule: schedules.Schedule, batch: dict,
                    key: Array, noised: bool) -> Array:
    """Logistic loss (one output, ``label`` in {0, 1}), cross-entropy (integer ``label``), or,
    when the batch has multi-hot ``labels [B, K]``, the mean logistic loss of K independent
    outputs (a multi-label classifier: every label of an image is a training signal).

    ``noised``: the classifier reads ``x_t`` at a uniform level ``t`` (noise-conditional).
    """
    x, t = batch["x"], None
    if noised:
        k_t, k_eps = jax.random.split(key)
        t = jax.random.randint(k_t, x.shape[:1], 1, schedule.num_levels + 1)
        x = (jnp.sqrt(schedule.abar[t])[:, None] * x
             + schedule.sigma[t][:, None] * jax.random.normal(k_eps, x.shape))
    logits = apply_fn(params, x, t, batch.get("cond"))
    if "labels" in batch:
        if logits.shape != batch["labels"].shape:
            raise ValueError(f"a multi-label classifier needs one output per label: logits "
                             f"{logits.shape}, labels {batch['labels'].shape} (set "
                             f"model.num_outputs = {batch['labels'].shape[-1]})")
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["labels"]))
    if logits.shape[-1] == 1:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], batch["label"]))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"].astype(jnp.int32)))


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=(
    "network", "parameterization", "batch_size", "lr", "grad_clip", "ema_decay", "sharding",
    "task_name", "cond_dropout", "noised", "sculpt_op"))
def _train_step(state: TrainState, data_key: Array, data, schedule: schedules.Schedule,
                batch: dict | None = None, *, network: Network, parameterization: str,
                batch_size: int, lr: float, grad_clip: float, ema_decay: float,
                sharding: NamedSharding, task_name: str = "diffusion",
                cond_dropout: float = 0.0, noised: bool = False,
                sculpt_op: sculpt.Operator | None = None) -> tuple[TrainState, Array]:
    """One update on ``batch`` (from the host) or on ``data.sample`` (an oracle or
    :class:`points.Points`, a traced argument, sampled here on the devices)."""
    k_data, k_loss = jax.random.split(jax.random.fold_in(data_key, state.step))
    apply_fn = LinenApply(network)
    if task_name == "classifier":
        batch = dict(batch)
        if "cond" in batch:
            batch["cond"] = conditioning.given(batch["cond"])
        loss, grads = jax.value_and_grad(classifier_loss)(state.params, apply_fn, schedule,
                                                          batch, k_loss, noised)
    elif task_name == "sculpt_classifier":  # bootstrapped from the EMA copy (compdiff.sculpt)
        loss, grads = jax.value_and_grad(sculpt.classifier_loss)(
            state.params, state.ema_params, apply_fn, data, schedule, k_loss, batch_size,
            sculpt_op)
    else:
        cond = None
        if batch is None:
            # Shard the batch across devices; params stay replicated, so XLA all-reduces
            # the grads.
            x0 = jax.lax.with_sharding_constraint(data.sample(k_data, batch_size), sharding)
        else:
            x0 = batch["x"]
            if "cond" in batch:
                cond = conditioning.drop(conditioning.given(batch["cond"]), k_data, cond_dropout)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, apply_fn, parameterization,
                                                  schedule, x0, k_loss, cond)
    updates, opt_state = _optimizer(lr, grad_clip).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    w = _ema_weight(state.step + 1, ema_decay)
    ema = jax.tree.map(lambda e, p: w * e + (1.0 - w) * p, state.ema_params, params)
    return TrainState(step=state.step + 1, params=params, ema_params=ema,
                      opt_state=opt_state), loss


# --- work directory: config, metrics, checkpoints ------------------------------------------
def _config_path(workdir: str) -> str:
    return os.path.join(workdir, "config.json")


def _read_config(workdir: str) -> ml_collections.ConfigDict:
    path = _config_path(workdir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no training config at {path}")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the training config {path}: {e}") from e


def _check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
    """A restart may change ``train.*`` (e.g. more steps), never what the weights mean.

    ``config`` is resolved (:func:`resolve_config`); so the data section
    compares the absolute points path. A config saved before ``data.path``
    and ``model.dim`` existed compares with their values for its built-in dataset.
    """
    old = _read_config(workdir)
    saved = old.to_dict()
    if not saved.setdefault("data", {}).get("source"):
        saved["data"].setdefault("path", "")
    if "dim" not in saved.setdefault("model", {}):
        try:
            saved["model"]["dim"] = model_dim(old)
        except (ValueError, AttributeError):
            pass  # left out: reported as different model settings below
    new = json.loads(config.to_json())
    changed = [s for s in _MODEL_SECTIONS if saved.get(s) != new.get(s)]
    if changed:
        raise ValueError(
            f"{workdir} holds a run with different {', '.join(changed)} settings "
            f"(see {_config_path(workdir)}); use a new workdir")


def _write_metrics(workdir: str, record: dict) -> None:
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def _write_atomically(path: str, text: str) -> None:
    """Replaces ``path`` by ``text`` all at once: a kill leaves the old file or the new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _log(workdir: str, step: int, steps: int, losses: list[Array], rate: float,
         elapsed: float, batch_size: int, board: Any = None, lr: float | None = None) -> None:
    """Console line, metrics.jsonl record and TensorBoard scalars for the steps since the
    last log (process 0 writes; ``board`` is its tensorboardX writer, None elsewhere)."""
    loss = float(jnp.mean(jnp.stack(losses)))
    eta = f"{(steps - step) / rate:.0f}s" if rate > 0 else "?"
    logging.info("step %d/%d  loss %.4f  %.2f steps/s  %.0f examples/s  ETA %s", step, steps,
                 loss, rate, rate * batch_size, eta)
    if not distributed.is_main():
        return
    record = {"step": step, "loss": loss, "steps_per_sec": rate,
              "examples_per_sec": rate * batch_size, "elapsed_s": elapsed}
    _write_metrics(workdir, record)
    if board is not None:
        scalars = {k: v for k, v in record.items() if k not in ("step", "elapsed_s")}
        if lr is not None:
            scalars["lr"] = lr
        for name, value in scalars.items():
            board.add_scalar(f"train/{name}", value, step)
        board.flush()


TB_DIR = "tb"


def _open_board(workdir: str, start: int) -> Any:
    """Process 0's TensorBoard writer on ``workdir/tb`` (None on other processes).

    tensorboardX writes event files without TensorFlow. A resumed run purges
    the points an earlier run logged after ``start`` (TensorBoard drops them
    when it reads the file), as :func:`_truncate_metrics` drops their lines.
    The file name carries ``start``: tensorboardX names files by the second,
    so a resume within the same second would otherwise overwrite the first
    run's file (a later run from the same ``start`` purges those points anyway).
    """
    if not distributed.is_main():
        return None
    import tensorboardX  # only process 0 writes

    return tensorboardX.SummaryWriter(os.path.join(workdir, TB_DIR),
                                      purge_step=start + 1 if start else None,
                                      filename_suffix=f".from_step{start}")


def _truncate_metrics(workdir: str, step: int) -> None:
    """Drops lines logged after the checkpoint we resume from (a kill loses those steps)."""
    path = os.path.join(workdir, "metrics.jsonl")
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
    _write_atomically(path, "".join(kept))


def _abstract_state(config: ml_collections.ConfigDict, network: Network) -> TrainState:
    return jax.eval_shape(lambda: init_state(config, network, jax.random.key(0)))


def _replicated() -> NamedSharding:
    return NamedSharding(Mesh(np.asarray(jax.devices()), ("batch",)), PartitionSpec())


# --- public entry points -------------------------------------------------------------------
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
    schedule = make_schedule(config)
    data = make_data(config, schedule)
    config = resolve_config(config, data)
    network = make_network(config)

    # Before the manager, whose cleanup deletes tmp saves. One lock file per process, so
    # the processes of one multi-host run share the directory and a second run fails.
    with workdir_lib.lock(workdir, process=jax.process_index()):
        return _train_locked(config, workdir, schedule, data, network)


def _train_locked(config: ml_collections.ConfigDict, workdir: str,
                  schedule: schedules.Schedule, data: Density | points.Points,
                  network: ResidualMLP) -> TrainState:
    """:func:`train` once it holds the work directory's lock."""
    tc = config.train
    replicated = _replicated()
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
            state = init_state(config, network, init_key)
        else:
            _check_resumable(workdir, config)
            manager.close()  # a fresh one comes back: see checkpoints.restore_newest
            manager = None
            manager, latest, state = checkpoints.restore_newest(
                workdir, _abstract_state(config, network), replicated,
                keep=tc.keep_checkpoints)
            logging.info("Resuming from step %d (%s)", latest, manager.directory)
        state = jax.device_put(state, replicated)
        start = int(state.step)
        if distributed.is_main():
            _write_atomically(_config_path(workdir), config.to_json(indent=2))
            _truncate_metrics(workdir, start)
        if start >= tc.steps:
            logging.info("Nothing to do: %s already trained for %d steps", workdir, start)
            return state
        batch_sharding = NamedSharding(replicated.mesh, PartitionSpec("batch"))
        step_fn = functools.partial(
            _train_step, network=network, parameterization=config.model.parameterization,
            batch_size=tc.batch_size, lr=tc.lr, grad_clip=tc.grad_clip, ema_decay=tc.ema_decay,
            sharding=batch_sharding, task_name=task(config),
            cond_dropout=tc.get("cond_dropout", 0.0),
            noised=config.model.get("noise_conditional", False),
            sculpt_op=(sculpt.operator_from_config(config)
                       if task(config) == "sculpt_classifier" else None))
        if isinstance(data, images.ImageSource):
            batches = data.batches(tc.batch_size, tc.seed, batch_sharding).iterate(start)
            data = None
        else:
            batches = itertools.repeat(None)
        hook = _sample_grid_hook(config, network, workdir)
        board = _open_board(workdir, start)
        try:
            return _run(state, step_fn, data_key, data, batches, schedule, manager, workdir,
                        tc, start, hook, board)
        finally:
            if board is not None:
                board.close()
    finally:
        if manager is not None:
            # Also on Ctrl-C: let an in-flight save finish so the next run resumes from it.
            manager.wait_until_finished()
            manager.close()


def _run(state: TrainState, step_fn, data_key: Array, data, batches: Iterator,
         schedule: schedules.Schedule, manager: ocp.CheckpointManager, workdir: str,
         tc: ml_collections.ConfigDict, start: int, hook=None, board=None) -> TrainState:
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
            _log(workdir, step, tc.steps, losses, timed / max(time.time() - t_window, 1e-9),
                 time.time() - t_start, tc.batch_size, board, tc.lr)
            t_window, timed, losses = time.time(), 0, []
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            manager.save(step, args=ocp.args.StandardSave(state))
        if hook is not None and (step % tc.get("sample_every", 0) == 0 or step == tc.steps):
            hook(state, step)
    logging.info("Done: %d steps in %.1fs; checkpoints in %s", tc.steps - start,
                 time.time() - t_start, manager.directory)
    return state


def _sample_grid_hook(config: ml_collections.ConfigDict, network: Network, workdir: str):
    """For image diffusion models with ``train.sample_every > 0``: writes
    ``samples/step_N.png``, reverse-diffusion samples of the EMA model (conditioned
    on ``train.grid_conditions`` when the model is conditional), or ``None``."""
    if (task(config) != "diffusion" or config.model.get("network", "mlp") != "unet"
            or not config.train.get("sample_every", 0)):
        return None
    from compdiff import image_grids  # matplotlib only where grids are drawn

    if jax.process_count() > 1:  # the grid samples on process 0 alone, which would hang
        logging.warning("train.sample_every: sample grids are not drawn in a multi-process run")
        return None

    def hook(state: TrainState, step: int) -> None:
        model = build_model(config, state.ema_params)
        image_grids.save_model_grid(model, tuple(config.model.image_shape),
                                    os.path.join(workdir, "samples", f"step_{step}.png"),
                                    seed=config.train.seed)
    return hook


def load_params(workdir: str, use_ema: bool = True
                ) -> tuple[ml_collections.ConfigDict, Network, Any]:
    """``(config, network, params)`` of the run in ``workdir`` at its latest checkpoint
    that restores (any task: a diffusion model or a classifier).

    A newer checkpoint that does not restore is skipped with a warning and
    left in place (a training may be running there; it moves such
    checkpoints aside itself when it resumes). Parameters: the bias-corrected
    EMA by default, else the last iterate. Needs only ``workdir`` (its
    config.json and checkpoints), not the training data.
    """
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"no training run at {workdir}: directory does not exist")
    config = _read_config(workdir)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"no checkpoints in {workdir}")
    try:
        network = make_network(config)
    except ValueError as e:
        raise ValueError(f"cannot rebuild the model of {workdir} from "
                         f"{_config_path(workdir)}: {e}") from e
    manager, _, state = checkpoints.restore_newest(
        workdir, _abstract_state(config, network), _replicated(), read_only=True)
    manager.close()
    return config, network, state.ema_params if use_ema else state.params


def load_model(workdir: str, use_ema: bool = True) -> DiffusionModel:
    """The diffusion model trained in ``workdir`` (see :func:`load_params`)."""
    config, _, params = load_params(workdir, use_ema)
    return build_model(config, params)


def quiet_orbax_logs() -> None:
    """Hides orbax's INFO lines from the absl console handler (entrypoints call this).

    Orbax logs every phase of every save at INFO, which buries the progress lines.
    """
    def keep(record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname

    logging.get_absl_handler().addFilter(keep)
