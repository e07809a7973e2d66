"""Long runs survive faults: kill -9 at any moment, damaged checkpoints, a second process.

Killed runs are subprocesses (``python -c _CHILD``) slowed down so that the
kill lands where we want it; reruns are in-process. Every run ends compared
with one uninterrupted run (bit-identical: same process kind, same devices).
"""

import gc
import importlib.util
import json
import logging
import os
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from compdiff import checkpoints, experiments
from compdiff import train as train_lib
from compdiff import workdir as workdir_lib
from compdiff.models.loading import load_model
from compdiff.testing import small_train_config
from compdiff.training import writers

_ROOT = pathlib.Path(__file__).parent.parent
_STEPS = 60
_TMP = ".orbax-checkpoint-tmp"

# argv: workdir, config JSON, seconds to sleep before each step, seconds to sleep before
# each checkpoint's final rename (the moment a save is most in flight). Prints STEPPING once
# the first step is about to run (after imports and restore), so kills land in training.
_CHILD = r"""
import asyncio, json, sys, time
import ml_collections
from orbax.checkpoint._src.path import atomicity
from compdiff import train

workdir, config, step_delay, save_delay = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
step, finalize, started = train._train_step, atomicity.AtomicRenameTemporaryPath.finalize, []

def slow_step(*args, **kwargs):
    if not started:
        started.append(print("STEPPING", flush=True))
    time.sleep(step_delay)
    return step(*args, **kwargs)

async def slow_finalize(self):
    await asyncio.sleep(save_delay)
    return await finalize(self)

train._train_step = slow_step
atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize
train.train(ml_collections.ConfigDict(json.loads(config)), workdir)
"""


def small_config(steps=_STEPS):
    return small_train_config(steps=steps)


def metric_steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def start_child(workdir, step_delay=0.0, save_delay=0.0, steps=_STEPS):
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(workdir), small_config(steps).to_json(),
         str(step_delay), str(save_delay)],
        cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(_ROOT)})


def wait_stepping(proc, timeout=60.0):
    """Blocks until the child prints STEPPING (it is training)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready and proc.stdout.readline().strip() == "STEPPING", "child did not start"


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "the child finished before it was killed"


def checkpoint_names(workdir):
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def our_warnings(caplog):
    """Warning lines from compdiff (not orbax's, e.g. its read-only-directory note)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "/orbax/" not in r.pathname]


def largest_file(directory):
    files = [p for p in pathlib.Path(directory).rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of _STEPS steps: (workdir, final state)."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    return workdir, train_lib.train(small_config(), workdir)


def assert_equals_reference(workdir, state, reference):
    chex.assert_trees_all_equal(state, reference[1])  # params, EMA, Adam state, step
    assert metric_steps(workdir) == metric_steps(reference[0]) == list(range(10, _STEPS + 1, 10))


# --- kill -9 -----------------------------------------------------------------------------
def test_kill_during_a_save_resumes_to_identical_state(reference, tmp_path, caplog):
    """Killed while checkpoint 40 is written but not yet renamed from its tmp directory."""
    workdir = str(tmp_path)
    proc = start_child(workdir, save_delay=1.0)
    deadline, checkpoints = time.time() + 60, tmp_path / "checkpoints"
    while not (checkpoints.is_dir()
               and any(n.startswith("40" + _TMP) for n in os.listdir(checkpoints))):
        assert time.time() < deadline and proc.poll() is None, "no save of step 40 seen"
        time.sleep(0.002)
    kill(proc)
    assert [n for n in checkpoint_names(workdir) if _TMP not in n] == ["20"]
    assert metric_steps(workdir)[:4] == [10, 20, 30, 40]  # logged beyond the checkpoint

    # A rerun that saves other steps (train.* may change) still removes the unfinished save.
    other = str(tmp_path.parent / "other_cadence")
    shutil.copytree(workdir, other)
    config = small_config()
    config.train.checkpoint_every = 30
    chex.assert_trees_all_equal(train_lib.train(config, other), reference[1])
    assert checkpoint_names(other) == ["20", "30", "60"]

    caplog.set_level(logging.INFO, logger="absl")
    state = train_lib.train(small_config(), workdir)
    assert f"Taking over the lock of {workdir} from pid {proc.pid}" in caplog.text
    assert "Resuming from step 20" in caplog.text
    assert_equals_reference(workdir, state, reference)
    assert checkpoint_names(workdir) == ["20", "40", "60"]  # the tmp directory is gone


def test_kill_at_random_moments_resumes_to_identical_state(reference, tmp_path):
    """Three kills at seeded random times in slowed runs (in steps, saves or logging)."""
    workdir, rng = str(tmp_path), np.random.default_rng(0)
    for _ in range(3):
        proc = start_child(workdir, step_delay=0.02, save_delay=0.05)
        wait_stepping(proc)
        time.sleep(rng.uniform(0.05, 0.5))  # 5 to 25 of the >= 20 steps left
        kill(proc)
    state = train_lib.train(small_config(), workdir)
    assert_equals_reference(workdir, state, reference)


# --- damaged checkpoints ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def at_40(tmp_path_factory):
    """A run stopped after 40 steps (checkpoints 20 and 40), to copy and damage."""
    workdir = str(tmp_path_factory.mktemp("at_40"))
    train_lib.train(small_config(steps=40), workdir)
    return workdir


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_newest_checkpoint_falls_back(reference, at_40, tmp_path, caplog, monkeypatch,
                                              damage):
    # The noise a failed restore used to leave: tensorstore reads completing into orbax's
    # closed event loop ("Event loop is closed", unretrieved task exceptions).
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    workdir = str(tmp_path / "run")
    shutil.copytree(at_40, workdir)
    newest = os.path.join(workdir, "checkpoints", "40")
    victim = largest_file(newest)
    if damage == "truncate":
        os.truncate(victim, 100)
    else:
        victim.unlink()
    caplog.set_level(logging.INFO, logger="absl")

    # load_model (read-only, maybe beside a training): falls back, moves nothing.
    model = load_model(workdir)
    warnings = our_warnings(caplog)
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"Checkpoint {newest} does not restore (")
    assert "left in place, using step 20" in warnings[0]
    assert checkpoint_names(workdir) == ["20", "40"]
    assert model.params is not None

    # Training: one warning line, the bad one moved aside, resumed from 20, same end.
    caplog.clear()
    state = train_lib.train(small_config(), workdir)
    warnings = our_warnings(caplog)
    assert warnings == [f"Checkpoint {newest} does not restore ({warnings[0].split('(', 1)[1]}"]
    assert warnings[0].endswith(f"moved to {newest}.corrupt, using step 20")
    assert "Resuming from step 20" in caplog.text
    gc.collect()  # reports coroutines dropped unfinished, if any
    assert not unraisable, [str(u.exc_value)[:100] for u in unraisable]
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text[-2000:]
    assert_equals_reference(workdir, state, reference)
    assert checkpoint_names(workdir) == ["20", "40", "40.corrupt", "60"]


def test_every_checkpoint_damaged_is_one_clear_error(at_40, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(at_40, workdir)
    for step in ("20", "40"):
        os.truncate(largest_file(os.path.join(workdir, "checkpoints", step)), 100)
    directory = os.path.join(workdir, "checkpoints")
    for attempt in (load_model, lambda w: train_lib.train(small_config(), w)):
        with pytest.raises(ValueError, match=f"no checkpoint in {directory} restores") as e:
            attempt(workdir)
        message = str(e.value)
        assert "\n" not in message and "40: " in message and "20: " in message
        assert "OUT_OF_RANGE" in message and "TensorStore details" not in message
        assert checkpoint_names(workdir) == ["20", "40"]  # nothing moved: maybe not the files


def test_corrupt_name_taken_gets_a_suffix(tmp_path):
    for _ in range(3):
        (tmp_path / "40").mkdir()
        checkpoints.move_aside(str(tmp_path / "40"))
    assert sorted(os.listdir(tmp_path)) == ["40.corrupt", "40.corrupt.2", "40.corrupt.3"]


# --- the work-directory lock -----------------------------------------------------------------
def test_second_training_refuses_at_once_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    workdir = str(tmp_path)
    proc = start_child(workdir, step_delay=1.0)  # a long training
    wait_stepping(proc)
    try:
        t0 = time.time()
        with pytest.raises(workdir_lib.WorkdirInUse) as e:
            train_lib.train(small_config(steps=1), workdir)
        assert time.time() - t0 < 5.0  # at once, not after waiting for the lock
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"{workdir} is in use by ")
        assert f"pid {proc.pid} on host {socket.gethostname()}" in message
        with pytest.raises(workdir_lib.WorkdirInUse, match=f"pid {proc.pid}"):
            with workdir_lib.lock(workdir):
                pass
    finally:
        kill(proc)

    caplog.set_level(logging.INFO, logger="absl")
    state = train_lib.train(small_config(steps=1), workdir)
    warnings = our_warnings(caplog)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"Taking over the lock of {workdir} from pid {proc.pid} "
                                  f"on host {socket.gethostname()}")
    assert int(state.step) == 1
    assert (tmp_path / "LOCK").read_text() == ""  # released cleanly: no warning next time


def test_locks_are_per_directory(tmp_path, caplog):
    root, sub = str(tmp_path), str(tmp_path / "models" / "ring")
    spec = importlib.util.spec_from_file_location("table2d_config",
                                                  _ROOT / "configs" / "experiments" / "table2d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with workdir_lib.lock(root):
        with pytest.raises(workdir_lib.WorkdirInUse, match=f"{root} is in use by pid"):
            experiments.run(module.get_config("quick"), root)  # refuses before any work
        assert os.listdir(root) == ["LOCK"]
        with workdir_lib.lock(sub):  # nested use, as table2d does
            with pytest.raises(workdir_lib.WorkdirInUse, match=f"pid {os.getpid()}"):
                with workdir_lib.lock(root):
                    pass
        with workdir_lib.lock(sub):  # released on exit
            pass
    assert "Taking over" not in caplog.text


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 40, "lo')
    writers.truncate_metrics(str(tmp_path), 20)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:2])
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]  # its .tmp renamed over it
