"""Training on image data: resumable batches, kill/resume, classifiers, the paper config."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff import train
from compdiff.data import clevr_positions, examples, images
from compdiff.models.diffusion import LinenApply
from compdiff.models.loading import load_model, load_params
from compdiff.training import state as state_lib
from compdiff.training import tasks
from configs.models import clevr, clevr_classifier

_ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    clevr_positions.prepare("tiny", path)
    return path


def _config(data_dir, steps, **train_overrides):
    config = clevr.get_config("tiny")
    config.data.data_dir = data_dir
    config.train.steps = steps
    config.train.update(train_overrides)
    return config


def test_batches_are_a_function_of_the_step(data_dir):
    source = clevr_positions.data_source("tiny", "train", data_dir)
    batches = images.ImageBatches(source, examples.image_position, batch_size=8, seed=3)
    again = images.ImageBatches(source, examples.image_position, batch_size=8, seed=3)
    from_five = next(batches.iterate(5))
    np.testing.assert_array_equal(np.asarray(from_five["x"]), again.get(5)["x"])
    np.testing.assert_array_equal(np.asarray(from_five["cond"]), again.get(5)["cond"])
    assert not np.array_equal(batches.get(5)["x"], batches.get(6)["x"])
    # 256 records, batch 8: step 32 starts a new epoch in a new order.
    assert not np.array_equal(batches.get(0)["x"], batches.get(32)["x"])
    x, cond = batches.get(0)["x"], batches.get(0)["cond"]
    assert x.shape == (8, 16 * 16 * 3) and x.min() >= -1 and x.max() <= 1
    assert cond.shape == (8, 2) and np.all((cond >= 0) & (cond <= 1))


def test_image_training_resumes_bit_identically(data_dir, tmp_path):
    straight = train.train(_config(data_dir, 4), str(tmp_path / "straight"))
    interrupted = str(tmp_path / "interrupted")
    train.train(_config(data_dir, 2), interrupted)  # stops as a killed run would, at step 2
    resumed = train.train(_config(data_dir, 4), interrupted)
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with open(os.path.join(interrupted, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["examples_per_sec"] > 0 for r in records)
    saved = json.load(open(os.path.join(interrupted, "config.json")))
    assert saved["model"]["image_shape"] == [16, 16, 3] and saved["model"]["cond_dim"] == 2
    model = load_model(interrupted)
    assert model.dim == 768 and model.cond_dim == 2


def test_kill_9_mid_training_resumes_bit_identically(data_dir, tmp_path):
    """A SIGKILL'ed image training (after its first checkpoint) resumes to the same state."""
    from tests.test_faults import _CHILD, kill, wait_stepping

    config = _config(data_dir, 8, checkpoint_every=2, log_every=2)
    straight = train.train(config, str(tmp_path / "straight"))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(killed), config.to_json(), "0.5", "0.0"],
        cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(_ROOT)})
    wait_stepping(proc, timeout=120)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "2").exists() and time.time() < deadline:
        time.sleep(0.1)
    kill(proc)
    saved = sorted(os.listdir(killed / "checkpoints"))
    assert "2" in saved and "8" not in saved, saved
    resumed = train.train(config, str(killed))
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sample_grids_are_written_while_training(data_dir, tmp_path):
    train.train(_config(data_dir, 2, sample_every=2), str(tmp_path / "run"))
    assert os.path.getsize(tmp_path / "run" / "samples" / "step_2.png") > 0


def test_classifier_trains_through_the_same_loop(data_dir, tmp_path):
    config = clevr_classifier.get_config("tiny")
    config.data.data_dir = data_dir
    config.train.steps = 3
    train.train(config, str(tmp_path / "clf"))
    saved, network, params = load_params(str(tmp_path / "clf"))
    assert saved.task == "classifier"
    logits = LinenApply(network)(params, jnp.zeros((2, 768)), None,
                                 jnp.full((2, 2), 0.5))
    assert logits.shape == (2, 1)
    with pytest.raises(ValueError, match="not a diffusion model"):
        load_model(str(tmp_path / "clf"))


def test_wrong_condition_length_is_a_clear_error(data_dir, tmp_path):
    config = _config(data_dir, 1)
    config.model.cond_dim = 3
    with pytest.raises(ValueError, match="cond_dim is 3 but the data's conditions have length 2"):
        train.train(config, str(tmp_path / "bad"))


def test_paper_config_shapes_and_one_step():
    """RRR appendix G's model (64 px, channels 128, 1,2,3,4, 3 blocks) at batch 2."""
    config = clevr.get_config("paper,param=eps")
    config.model.image_shape, config.model.dim = [64, 64, 3], 64 * 64 * 3
    network = tasks.make_network(config)
    state = jax.eval_shape(lambda: state_lib.init_state(config, network, jax.random.key(0)))
    count = sum(np.prod(p.shape) for p in jax.tree.leaves(state.params))
    assert 100e6 < count < 130e6, count
    assert (network.channels, network.channel_mult, network.num_res_blocks) == (
        128, (1, 2, 3, 4), 3)
    assert config.schedule.num_levels == 100 and config.train.batch_size == 1024
    assert config.train.lr == 1e-4 and config.train.steps == 20_000
    # One update at batch 2 traces on the full-size network (shapes only: compiling and
    # running it cost CI a minute and checks nothing the small-network tests do not).
    batch = {"x": jax.ShapeDtypeStruct((2, network.dim), jnp.float32),
             "cond": jax.ShapeDtypeStruct((2, 2), jnp.float32)}
    loss_of = tasks.DenoisingLoss("eps", cond_dropout=0.1)
    new_state, loss = jax.eval_shape(lambda s, b: train._train_step(
        s, jax.random.key(2), None, tasks.make_schedule(config), b, network=network,
        loss=loss_of, batch_size=2, lr=1e-4, grad_clip=10.0, ema_decay=0.9999,
        sharding=state_lib.batch_sharding()), state, batch)
    assert loss.shape == () and jax.tree.map(lambda a: a.shape, new_state.params) == \
        jax.tree.map(lambda a: a.shape, state.params)


_FOUR_DEVICES = """
import json, sys, jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from compdiff import train
from compdiff.data import clevr_positions, examples, images
from configs.models import clevr
config = clevr.get_config("tiny")
config.data.data_dir, config.train.steps = sys.argv[1], 3
state = train.train(config, sys.argv[2])
sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("batch",)), PartitionSpec("batch"))
source = clevr_positions.data_source("tiny", "train", sys.argv[1])
batch = next(images.ImageBatches(source, examples.image_position, 8, 0, sharding).iterate(0))
np.savez(sys.argv[3], *[np.asarray(p) for p in jax.tree.leaves(state.params)])
print("RESULT", json.dumps({"devices": jax.device_count(),
                            "batch_devices": len(batch["x"].sharding.device_set)}))
"""


def test_four_devices_train_like_one(data_dir, tmp_path):
    """Data parallelism: batches split over 4 devices, gradients all-reduced by XLA."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(_ROOT))
    out = tmp_path / "params4.npz"
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES, data_dir,
                           str(tmp_path / "four"), str(out)], env=env, cwd=_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result == {"devices": 4, "batch_devices": 4}
    config = _config(data_dir, 3)
    one = train.train(config, str(tmp_path / "one"))
    four = np.load(out)
    # Another device count changes the order of the gradient reduction: rounding only. Adam
    # divides by sqrt(v), so where a gradient is ~0 (zero-initialized layers) rounding can
    # flip an update of up to lr per step; everywhere else the parameters agree closely.
    diffs = np.concatenate([np.abs(four[f"arr_{i}"] - np.asarray(leaf)).ravel()
                            for i, leaf in enumerate(jax.tree.leaves(one.params))])
    assert diffs.max() <= 3 * config.train.lr * 1.01, diffs.max()
    assert np.mean(diffs < 1e-5) > 0.99, np.mean(diffs < 1e-5)
    losses = [[json.loads(line)["loss"] for line in open(tmp_path / run / "metrics.jsonl")]
              for run in ("one", "four")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)
