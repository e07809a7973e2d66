"""Trained models from their work directories: ``load_model("runs/ring")``.

A work directory's ``config.json`` holds everything that rebuilds the model
(dimension, network, parameterization, schedule: training stores it resolved,
:func:`compdiff.training.tasks.resolve_config`), and ``checkpoints/N/`` the
train state; so loading needs only the directory, never the training data nor
the trainer (:mod:`compdiff.train`). The network comes from the run's task
(:mod:`compdiff.training.tasks`): a task registered outside the built-ins is
known once the module that registers it is imported.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import ml_collections

from compdiff.models.diffusion import DiffusionModel, LinenApply
from compdiff.training import state as state_lib
from compdiff.training import tasks

CONFIG = "config.json"


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The training config saved in ``workdir`` (that of its latest (re)start)."""
    path = config_path(workdir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no training config at {path}")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the training config {path}: {e}") from e


def build_model(config: ml_collections.ConfigDict, params: Any) -> DiffusionModel:
    """The :class:`DiffusionModel` of ``config`` with network parameters ``params``.

    Needs no data: the dimension is ``model.dim`` (see :func:`~compdiff.training.tasks.model_dim`).
    """
    name = tasks.task_name(config)
    if name != "diffusion":
        raise ValueError(f"the run is a {name}, not a diffusion model")
    dim = tasks.model_dim(config)
    return DiffusionModel(apply_fn=LinenApply(tasks.make_network(config, dim)), params=params,
                          schedule=tasks.make_schedule(config),
                          parameterization=config.model.parameterization, dim=dim,
                          name=f"{tasks.data_name(config)}/{config.model.parameterization}",
                          cond_dim=config.model.get("cond_dim", 0))


def load_params(workdir: str, use_ema: bool = True
                ) -> tuple[ml_collections.ConfigDict, nn.Module, Any]:
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
    config = read_config(workdir)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"no checkpoints in {workdir}")
    try:
        network = tasks.make_network(config)
    except ValueError as e:
        raise ValueError(f"cannot rebuild the model of {workdir} from "
                         f"{config_path(workdir)}: {e}") from e
    state = state_lib.restore(workdir, config, network)
    return config, network, state.ema_params if use_ema else state.params


def load_model(workdir: str, use_ema: bool = True) -> DiffusionModel:
    """The diffusion model trained in ``workdir`` (see :func:`load_params`)."""
    config, _, params = load_params(workdir, use_ema)
    return build_model(config, params)
