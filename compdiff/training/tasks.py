"""Training tasks: per task its data, its network and its loss, found by name in a registry.

A config names its task (``config.task``, default ``"diffusion"``); the trainer
(:mod:`compdiff.train`) and the loader (:mod:`compdiff.models.loading`) ask the
registry for it. A new task is one call::

    register_task(Task(name="my_task", data=my_data, network=my_network, loss=MyLoss.from_config))

in the module that defines its parts (which the trainer must import). The loss is picked
here, on the host, once per run: the jitted step receives it as a static (hashable)
callable, so no string chooses it inside the step. Built-in tasks:

- ``diffusion``: the denoising loss, the same for every parameterization (docs/design.md section 1),

      L(theta) = E_{x_0, t ~ U{1..T}, eps ~ N(0, I)} ||eps - eps_hat_theta(x_t, t)||^2,
      x_t = sqrt(abar_t) x_0 + sigma_t eps,

  with ``x_0`` drawn afresh every step: exact samples of a built-in toy oracle
  (``data.dataset``, :mod:`compdiff.data.toy2d`), minibatches of the user's own points
  (``data.path``, an ``[n, d]`` array in a ``.npz`` file, drawn with replacement,
  :mod:`compdiff.data.points`), or an image dataset (``data.source``, a tfds builder such
  as ``clevr_positions`` read through grain, :mod:`compdiff.data.images`); ``data.source``
  overrides ``data.path``, which overrides ``data.dataset``. Conditional models
  (``model.cond_dim > 0``) read each example's condition vector, replaced by the null
  condition with probability ``train.cond_dropout`` (classifier-free guidance,
  :mod:`compdiff.models.conditioning`).
- ``classifier``: logistic loss on ``label`` (one output), cross-entropy (several) or one
  logistic loss per output on multi-hot ``labels`` (multi-label), on clean images or, when
  the classifier is noise-conditional, on ``x_t`` at a uniform level.
- ``sculpt_classifier``: registered by :mod:`compdiff.sculpt`.

The network is ``model.network``: ``mlp`` (:class:`ResidualMLP`), ``unet``
(:class:`UNet`) or ``classifier`` (:class:`ImageClassifier`); a task may bring its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding

from compdiff import schedules
from compdiff.compose import Density
from compdiff.data import images, points, toy2d
from compdiff.models import conditioning
from compdiff.models.classifier import ImageClassifier
from compdiff.models.diffusion import ApplyFn, predict
from compdiff.models.mlp import ResidualMLP
from compdiff.models.unet import UNet

Array = jnp.ndarray
# Training data: an oracle or points (sampled on the devices inside the step: pytrees with
# ``.dim`` and ``.sample(key, num)``) or an image source (batches fed from the host).
Data = Any
NETWORKS = ("mlp", "unet", "classifier")


class StepInputs(NamedTuple):
    """What a loss sees of one training step, besides the parameters it differentiates."""

    ema_params: Any            # the EMA copy (held fixed: bootstrapped targets)
    apply_fn: ApplyFn          # the network: ``apply_fn(params, x, t, cond)``
    schedule: schedules.Schedule
    data: Data | None          # device-side data (oracle, points, bases); None for images
    batch: dict | None         # this step's host batch (images); None for device-side data
    data_key: Array            # randomness of the data: the minibatch, condition dropout
    loss_key: Array            # randomness of the loss: levels, noise
    batch_size: int
    sharding: NamedSharding    # the batch axis over all devices


class Loss(Protocol):
    """``loss(params, inputs) -> scalar``; hashable (a static argument of the jitted step)."""

    def __call__(self, params: Any, inputs: StepInputs) -> Array: ...


@dataclasses.dataclass(frozen=True)
class Task:
    """A training task.

    ``data(config, schedule)``: the training data. ``network(config, dim)``: the network
    over ``R^dim`` (``dim`` None: from the config, :func:`model_dim`). ``loss(config)``:
    the hashable :class:`Loss` of a run of ``config``.
    """

    name: str
    data: Callable[[ml_collections.ConfigDict, schedules.Schedule], Data]
    network: Callable[[ml_collections.ConfigDict, int | None], nn.Module]
    loss: Callable[[ml_collections.ConfigDict], Loss]


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Makes ``task`` known by ``task.name`` (``config.task``); a name is registered once."""
    if task.name in _TASKS:
        raise ValueError(f"a training task named {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def names() -> list[str]:
    return sorted(_TASKS)


def task_name(config: ml_collections.ConfigDict) -> str:
    """``config.task`` (default ``"diffusion"``), checked against the registry."""
    return get_task(config).name


def get_task(config: ml_collections.ConfigDict) -> Task:
    """The registered :class:`Task` that ``config.task`` names."""
    name = config.get("task", "diffusion")
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known: {names()} (a task is known once "
                         f"the module that registers it is imported)")
    return _TASKS[name]


# --- building blocks from a config ---------------------------------------------------------
def make_schedule(config: ml_collections.ConfigDict) -> schedules.Schedule:
    return schedules.get(config.schedule.name, config.schedule.num_levels)


def make_data(config: ml_collections.ConfigDict, schedule: schedules.Schedule) -> Data:
    """The training data of ``config``'s task."""
    return get_task(config).data(config, schedule)


def make_network(config: ml_collections.ConfigDict, dim: int | None = None) -> nn.Module:
    """The network of ``config``'s task over ``R^dim`` (default: :func:`model_dim`)."""
    return get_task(config).network(config, dim)


def data_name(config: ml_collections.ConfigDict) -> str:
    """The data's label: the image builder, the points file's stem, or the dataset's name."""
    d = config.data
    if d.get("source", ""):
        return f"{d.source}/{d.builder_config}"
    path = d.get("path", "")
    return os.path.splitext(os.path.basename(path))[0] if path else d.dataset


def model_dim(config: ml_collections.ConfigDict) -> int:
    """The model's dimension: ``model.dim``, stored by training in the saved config.

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


def resolve_config(config: ml_collections.ConfigDict, data: Data) -> ml_collections.ConfigDict:
    """``config`` as training saves it: ``model.dim`` from ``data``, ``data.path`` absolute.

    Image data also sets ``model.image_shape``, and with ``model.standardize_cond`` the
    condition statistics ``model.cond_shift`` / ``model.cond_scale`` the UNet standardizes
    its conditions by (:meth:`~compdiff.data.images.ImageSource.condition_stats`; kept when
    the config states them). A path replaces the dataset, so ``data.dataset`` becomes "" (the
    saved config names only the data it was trained on).
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
        if task_name(config) == "diffusion" and stated_c and stated_c != data.cond_dim:
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


# --- the built-in tasks' data and networks -------------------------------------------------
def dataset(config: ml_collections.ConfigDict, schedule: schedules.Schedule
            ) -> Density | points.Points | images.ImageSource:
    """``data.source`` (images), else ``data.path`` (points), else ``data.dataset`` (oracle).

    Points and oracles are pytrees with ``.dim`` and ``.sample(key, num) ->
    [num, dim]``, sampled on the devices inside the step; an image source
    feeds batches from the host (:class:`compdiff.data.images.ImageSource`).
    """
    d = config.data
    if d.get("source", ""):
        return images.ImageSource.from_config(d)
    path = d.get("path", "")
    return points.load(path) if path else toy2d.get(d.dataset, schedule)


def network(config: ml_collections.ConfigDict, dim: int | None = None
            ) -> ResidualMLP | UNet | ImageClassifier:
    """``model.network`` (default ``mlp``) of ``config`` over ``R^dim``.

    Images need ``model.image_shape``, stored by :func:`resolve_config`.
    ``model.widen`` / ``model.norm`` default to 1 / ``"none"``: configs saved before
    those fields existed rebuild the network they were trained with.
    """
    m = config.model
    kind = m.get("network", "mlp")
    if kind not in NETWORKS:
        raise ValueError(f"unknown model.network {kind!r} for task "
                         f"{config.get('task', 'diffusion')!r}; known: {list(NETWORKS)}")
    if kind == "mlp":
        return ResidualMLP(dim=model_dim(config) if dim is None else dim, hidden=m.hidden,
                           num_blocks=m.num_blocks, time_embedding=m.time_embedding,
                           num_levels=config.schedule.num_levels, widen=m.get("widen", 1),
                           norm=m.get("norm", "none"))
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
    return ImageClassifier(image_shape=shape, num_outputs=m.num_outputs,
                           channels=m.channels, channel_mult=tuple(m.channel_mult),
                           query=m.get("query", "none"),
                           num_levels=config.schedule.num_levels if m.get(
                               "noise_conditional", False) else 0)


# --- the built-in losses -------------------------------------------------------------------
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


@dataclasses.dataclass(frozen=True)
class DenoisingLoss:
    """:func:`loss_fn` on this step's minibatch: drawn from device-side data (sharded over
    the batch axis) or the host batch's ``x``, its conditions dropped with probability
    ``cond_dropout``."""

    parameterization: str
    cond_dropout: float = 0.0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> DenoisingLoss:
        return cls(config.model.parameterization, config.train.get("cond_dropout", 0.0))

    def __call__(self, params: Any, inputs: StepInputs) -> Array:
        cond, batch = None, inputs.batch
        if batch is None:
            # Shard the batch across devices; params stay replicated, so XLA all-reduces
            # the grads.
            x0 = jax.lax.with_sharding_constraint(
                inputs.data.sample(inputs.data_key, inputs.batch_size), inputs.sharding)
        else:
            x0 = batch["x"]
            if "cond" in batch:
                cond = conditioning.drop(conditioning.given(batch["cond"]), inputs.data_key,
                                         self.cond_dropout)
        return loss_fn(params, inputs.apply_fn, self.parameterization, inputs.schedule, x0,
                       inputs.loss_key, cond)


@dataclasses.dataclass(frozen=True)
class ClassifierLoss:
    """:func:`classifier_loss` on the host batch (its ``cond``, if any, always given)."""

    noised: bool = False

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ClassifierLoss:
        return cls(bool(config.model.get("noise_conditional", False)))

    def __call__(self, params: Any, inputs: StepInputs) -> Array:
        batch = dict(inputs.batch)
        if "cond" in batch:
            batch["cond"] = conditioning.given(batch["cond"])
        return classifier_loss(params, inputs.apply_fn, inputs.schedule, batch,
                               inputs.loss_key, self.noised)


DIFFUSION = register_task(Task(name="diffusion", data=dataset, network=network,
                               loss=DenoisingLoss.from_config))
CLASSIFIER = register_task(Task(name="classifier", data=dataset, network=network,
                                loss=ClassifierLoss.from_config))
