"""Models of the user's own data: a points file trains, loads in a fresh process, composes.

The fresh processes (``scripts/sample.py``, a short loader script) prove that a
work directory alone rebuilds its model: no dataset registry, no data file.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compdiff import train as train_lib
from compdiff.data import points
from compdiff.models.loading import load_model
from configs.models import toy2d as toy2d_config

ROOT = pathlib.Path(__file__).parent.parent


def small_config(path="", param="energy_l2", steps=40):
    """The tiny training run of tests/test_train.py, on the points in ``path``."""
    config = toy2d_config.get_config(f"param={param}")
    config.data.path = str(path)
    config.model.hidden, config.model.num_blocks = 32, 2
    config.schedule.num_levels = 50
    config.train.update(steps=steps, batch_size=128, log_every=20, checkpoint_every=20)
    return config


def circle_left(num=512, seed=0):
    """Points on the left half of the circle of radius 0.5, a little noisy: ``[num, 2]``."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(np.pi / 2, 3 * np.pi / 2, num)
    x = 0.5 * np.stack([np.cos(angles), np.sin(angles)], -1)
    return (x + 0.02 * rng.standard_normal(x.shape)).astype(np.float32)


def run(args, timeout=120):
    """Runs ``args`` in a fresh Python process from the repository root."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def saved_config(workdir):
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    """``(workdir, points file)`` of a 40-step energy model of the circle_left points."""
    tmp = tmp_path_factory.mktemp("user2d")
    path = tmp / "circle_left.npz"
    np.savez(path, x=circle_left())
    workdir = str(tmp / "run")
    train_lib.train(small_config(path), workdir)
    return workdir, path


# --- the points file ---------------------------------------------------------------------------
def test_points_load_and_sample(tmp_path):
    x = circle_left(64)
    np.savez(tmp_path / "pts.npz", x=x, labels=np.arange(64))  # other arrays next to "x": fine
    np.savez(tmp_path / "one.npz", x.astype(np.float64))  # a single array under any name
    np.save(tmp_path / "arr.npy", x)
    for name in ["pts.npz", "one.npz", "arr.npy"]:
        data = points.load(str(tmp_path / name))
        assert data.dim == 2 and data.num == 64 and data.x.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(data.x), x)
    assert points.load(str(tmp_path / "pts.npz")).name == "pts"

    data = points.load(str(tmp_path / "pts.npz"))
    sample = jax.jit(lambda d, key: d.sample(key, 256))
    batch = np.asarray(sample(data, jax.random.key(0)))
    assert batch.shape == (256, 2)
    assert all((row == x).all(axis=1).any() for row in batch)  # rows of the dataset
    assert len(np.unique(batch, axis=0)) > 64 * 0.8  # random indices, not a fixed slice
    # The array is an argument of the compiled step, not a constant baked into it.
    jaxpr = jax.make_jaxpr(lambda d, key: d.sample(key, 8))(data, jax.random.key(0))
    assert len(jax.tree.leaves(data)) == 1 and not jaxpr.consts


@pytest.mark.parametrize("content, match", [
    (None, "no such file"),
    (b"not a numpy file", "cannot read it as .npz or .npy"),
    ({"x": np.zeros(10)}, r"expected an \[n, d\] array .* got shape \(10,\)"),
    ({"x": np.zeros((4, 2, 2))}, r"got shape \(4, 2, 2\)"),
    ({"x": np.zeros((4, 0))}, r"got shape \(4, 0\)"),
    ({"x": np.zeros((1, 2))}, "at least 2 points, got 1"),
    ({"x": np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, np.inf]])},
     "2 non-finite values .* in 2 of 3 rows, the first in row 1"),
    ({"x": np.array([[1e39, 0.0], [0.0, 0.0]])}, "1 non-finite value"),
    ({"x": np.array([["a", "b"], ["c", "d"]])}, "expected real numbers, got dtype <U1"),
    ({"a": np.zeros((4, 2)), "b": np.zeros((4, 2))},
     r"expected the points under key 'x' .* found arrays \['a', 'b'\]"),
])
def test_bad_points_file(tmp_path, content, match):
    path = tmp_path / "bad.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.savez(path, **content)
    error = FileNotFoundError if content is None else ValueError
    with pytest.raises(error, match=match) as info:
        points.load(str(path))
    message = str(info.value)
    assert message.startswith(f"points file {path}:") and "\n" not in message
    # Training reports the same error before it creates the work directory.
    workdir = tmp_path / "run"
    with pytest.raises(error, match=match):
        train_lib.train(small_config(path), str(workdir))
    assert not workdir.exists()


# --- training on it, loading and composing in fresh processes ------------------------------
def test_trained_model_composes_with_an_oracle(run_2d, tmp_path):
    workdir, path = run_2d
    config = saved_config(workdir)
    assert config["model"]["dim"] == 2
    assert config["data"] == {"dataset": "", "path": str(path)}
    out = tmp_path / "mine_ring"
    proc = run(["scripts/sample.py", f"--model=mine={workdir}", "--model=ring=oracle:ring",
                "--composition=mine*ring", "--sampler=ula", "--steps_per_level=1",
                "--num=64", f"--out={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout
    with np.load(f"{out}.npz") as f:
        x = f["x"]
    assert x.shape == (64, 2) and np.isfinite(x).all()
    assert os.path.exists(f"{out}.png")


def test_exact_needs_an_oracle_for_every_leaf(run_2d, tmp_path):
    workdir, path = run_2d
    proc = run(["scripts/sample.py", f"--model=mine={workdir}", "--model=ring=oracle:ring",
                "--composition=mine*ring", "--exact", f"--out={tmp_path / 'out'}"])
    assert proc.returncode != 0
    assert f"trained on the points in {path}, which have none" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.npz").exists()


def test_three_dimensional_points_load_without_the_data(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "blob3d.npz"
    np.savez(path, rng.normal(0.3, 0.2, (256, 3)).astype(np.float32))
    workdir = str(tmp_path / "run")
    state = train_lib.train(small_config(path, param="eps"), workdir)
    assert saved_config(workdir)["model"]["dim"] == 3
    path.unlink()  # the work directory alone rebuilds the model
    script = textwrap.dedent(f"""
        import json, jax.numpy as jnp
        from compdiff.models.loading import load_model
        m = load_model({workdir!r})
        s = m.score(jnp.zeros((4, 3)), 5)
        print("RESULT", json.dumps({{"dim": m.dim, "name": m.name, "shape": list(s.shape),
                                    "finite": bool(jnp.isfinite(s).all()),
                                    "kernel": m.params["input"]["kernel"].tolist()}}))
    """)
    proc = run(["-c", script])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["dim"] == 3 and result["name"] == "blob3d/eps"
    assert result["shape"] == [4, 3] and result["finite"]
    np.testing.assert_array_equal(result["kernel"], state.ema_params["input"]["kernel"])


# --- work directories: resuming, and older ones without model.dim -------------------------------
def test_resume_refuses_other_points(run_2d, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    shutil.copytree(run_2d[0], workdir)
    other = tmp_path / "other.npz"
    np.savez(other, x=circle_left(seed=1))
    with pytest.raises(ValueError, match="different data settings"):
        train_lib.train(small_config(other), workdir)
    # The same file by a relative path is the same data: nothing to do.
    monkeypatch.chdir(run_2d[1].parent)
    assert int(train_lib.train(small_config(run_2d[1].name), workdir).step) == 40


def test_model_dim_must_match_the_data(tmp_path):
    np.savez(tmp_path / "pts.npz", x=circle_left(8))
    config = small_config(tmp_path / "pts.npz")
    config.model.dim = 3
    with pytest.raises(ValueError, match=r"model.dim is 3 but the data \(pts\) has dimension 2"):
        train_lib.train(config, str(tmp_path / "run"))


def test_old_workdir_without_model_dim(run_2d, tmp_path):
    """Saved before ``model.dim``: a built-in dataset falls back to the registry, else an error."""
    workdir = tmp_path / "run"
    shutil.copytree(run_2d[0], workdir)
    config = saved_config(workdir)
    del config["model"]["dim"]
    (workdir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"cannot rebuild the model of {workdir} .* set model.dim"):
        load_model(str(workdir))

    # As an old run on a built-in 2D dataset wrote it (no data.path, no model.dim).
    del config["data"]["path"]
    config["data"]["dataset"] = "left_half_ring"
    (workdir / "config.json").write_text(json.dumps(config))
    model = load_model(str(workdir))
    assert model.dim == 2 and model.name == "left_half_ring/energy_l2"
    old = small_config()
    old.data.dataset = "left_half_ring"
    assert int(train_lib.train(old, str(workdir)).step) == 40  # resumes: nothing to do
