"""Training: the loss goes down, runs resume exactly, checkpoints load or fail clearly."""

import dataclasses
import importlib.util
import json
import logging
import os
import pathlib
import shutil

import chex
import jax
import pytest

from compdiff import train as train_lib
from compdiff.data import toy2d
from compdiff.models import DiffusionModel
from compdiff.models.diffusion import LinenApply
from compdiff.models.loading import load_model, load_params
from compdiff.testing import small_train_config
from compdiff.training import tasks, writers
from compdiff.training.state import init_state

_CONFIG_FILE = pathlib.Path(__file__).parent.parent / "configs" / "models" / "toy2d.py"


def load_config_module():
    spec = importlib.util.spec_from_file_location("toy2d_config", _CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


small_config = small_train_config


def metric_steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted 40-step run."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    return workdir, train_lib.train(small_config(), workdir)


def test_config_variants():
    module = load_config_module()
    config = module.get_config("dataset=left_bar,param=energy_dae")
    assert (config.data.dataset, config.model.parameterization) == ("left_bar", "energy_dae")
    assert module.get_config(None).data.dataset == "ring"
    with pytest.raises(ValueError, match="unknown param 'energy'"):
        module.get_config("param=energy")
    with pytest.raises(ValueError, match="unknown dataset 'rings'"):
        module.get_config("dataset=rings")
    with pytest.raises(ValueError, match="key=value"):
        module.get_config("ring,eps")


def test_training_reduces_loss(tmp_path):
    config = small_config("energy_l2", steps=150)
    config.train.update(log_every=50, checkpoint_every=150)
    state = train_lib.train(config, str(tmp_path))
    schedule = tasks.make_schedule(config)
    oracle = toy2d.get("ring", schedule)
    apply_fn = LinenApply(tasks.make_network(config, 2))
    x0 = jax.jit(oracle.sample, static_argnums=1)(jax.random.key(7), 4096)
    loss = jax.jit(lambda p: tasks.loss_fn(p, apply_fn, "energy_l2", schedule, x0,
                                               jax.random.key(8)))
    initial = init_state(config, apply_fn.module, jax.random.key(0)).params
    assert loss(state.params) < 0.5 * loss(initial)
    # The bias-corrected EMA (decay 0.999) weighs all 150 iterates about equally: it trails.
    assert loss(state.ema_params) < loss(initial)
    assert int(state.step) == 150


def test_ema_is_bias_corrected(tmp_path):
    """The EMA is the debiased average of the iterates after each update, none on the init.

    ``ema_n = sum_k (1 - d) d^(n-k) params_k / (1 - d^n)``; the plain EMA started
    at the random init would keep weight ``d^n`` on it.
    """
    config = small_config(steps=1)
    state = train_lib.train(config, str(tmp_path / "one"))  # d = 0.999
    chex.assert_trees_all_equal(state.ema_params, state.params)  # ema_1 = params_1 exactly

    # d = 0.5, three updates (one per run, resumed: bit-identical to one run) to get the iterates.
    workdir, iterates = str(tmp_path / "three"), []
    for steps in (1, 2, 3):
        config = small_config(steps=steps)
        config.train.ema_decay = 0.5
        state = train_lib.train(config, workdir)
        iterates.append(state.params)
    expected = jax.tree.map(lambda p1, p2, p3: (p1 / 8 + p2 / 4 + p3 / 2) / (1 - 0.5**3),
                            *iterates)
    chex.assert_trees_all_close(state.ema_params, expected, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(load_model(workdir).params, expected,
                                rtol=1e-6, atol=1e-7)


def test_interrupted_run_resumes_to_identical_state(finished, tmp_path, monkeypatch, caplog):
    uninterrupted_dir, uninterrupted = finished
    workdir = str(tmp_path)
    write = writers.write_metrics

    def killed_after_step_30(workdir, record):
        write(workdir, record)
        if record["step"] == 30:
            raise KeyboardInterrupt

    monkeypatch.setattr(writers, "write_metrics", killed_after_step_30)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(small_config(), workdir)
    monkeypatch.setattr(writers, "write_metrics", write)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20"]
    assert metric_steps(workdir) == [10, 20, 30]

    caplog.set_level(logging.INFO, logger="absl")
    resumed = train_lib.train(small_config(), workdir)
    assert "Resuming from step 20" in caplog.text
    assert metric_steps(workdir) == metric_steps(uninterrupted_dir) == [10, 20, 30, 40]
    chex.assert_trees_all_equal(resumed, uninterrupted)

    # A finished run does nothing; more steps continue from the last checkpoint.
    caplog.clear()
    again = train_lib.train(small_config(), workdir)
    assert "Nothing to do" in caplog.text and metric_steps(workdir)[-1] == 40
    chex.assert_trees_all_equal(again, uninterrupted)
    longer = train_lib.train(small_config(steps=50), workdir)
    assert "Resuming from step 40" in caplog.text
    assert int(longer.step) == 50 and metric_steps(workdir) == [10, 20, 30, 40, 50]


def test_resume_refuses_a_different_model(finished, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(finished[0], workdir)
    config = small_config()
    config.model.hidden = 64
    with pytest.raises(ValueError, match="different model settings"):
        train_lib.train(config, workdir)


def test_load_model(finished):
    workdir, state = finished
    model = load_model(workdir)
    assert isinstance(model, DiffusionModel) and model.parameterization == "eps"
    chex.assert_trees_all_equal(model.params, state.ema_params)
    chex.assert_trees_all_equal(load_model(workdir, use_ema=False).params,
                                state.params)
    assert model.score(jax.numpy.zeros((3, 2)), 5).shape == (3, 2)


def test_load_model_missing(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=missing):
        load_model(missing)
    (tmp_path / "config.json").write_text(small_config().to_json())
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        load_model(str(tmp_path))


def test_load_model_corrupt_checkpoint(finished, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(finished[0], workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    for root, _, files in os.walk(checkpoints):  # every one: load_model falls back past one
        for name in files:
            pathlib.Path(root, name).write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"no checkpoint in {checkpoints} restores .*40: "):
        load_model(workdir)


@dataclasses.dataclass(frozen=True)
class _AbsoluteLoss:
    """A toy loss: mean |eps - eps_hat| on oracle samples (any hashable callable will do)."""

    def __call__(self, params, inputs: tasks.StepInputs):
        x0 = inputs.data.sample(inputs.data_key, inputs.batch_size)
        k_t, k_eps = jax.random.split(inputs.loss_key)
        t = jax.random.randint(k_t, x0.shape[:1], 1, inputs.schedule.num_levels + 1)
        eps = jax.random.normal(k_eps, x0.shape)
        x_t = (jax.numpy.sqrt(inputs.schedule.abar[t])[:, None] * x0
               + inputs.schedule.sigma[t][:, None] * eps)
        return jax.numpy.mean(jax.numpy.abs(eps - inputs.apply_fn(params, x_t, t, None)))


def test_a_new_task_is_one_registration(tmp_path):
    tasks.register_task(tasks.Task(name="test_absolute", data=tasks.dataset,
                                   network=tasks.network, loss=lambda config: _AbsoluteLoss()))
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_task(tasks.Task(name="test_absolute", data=tasks.dataset,
                                       network=tasks.network, loss=lambda config: _AbsoluteLoss()))
    config = small_config("eps", steps=4)
    config.task = "test_absolute"
    config.train.update(log_every=2, checkpoint_every=4)
    state = train_lib.train(config, str(tmp_path))
    assert int(state.step) == 4
    saved, _, params = load_params(str(tmp_path))
    assert saved.task == "test_absolute"
    chex.assert_trees_all_equal(params, state.ema_params)
    with pytest.raises(ValueError, match="not a diffusion model"):
        load_model(str(tmp_path))  # only the diffusion task makes DiffusionModels
    config.task = "no_such_task"
    with pytest.raises(ValueError, match="unknown task 'no_such_task'"):
        train_lib.train(config, str(tmp_path / "other"))
