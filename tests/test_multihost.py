"""Two processes on localhost, 2 CPU devices each (gloo collectives), are one 4-device run.

``scripts/train.py`` and ``scripts/sample.py`` run as 2 processes joined by
``--coordinator_address/--num_processes/--process_id`` (:mod:`compdiff.distributed`)
and as 1 process with 4 forced CPU devices. The global batch is sharded over
the 4 devices either way and every draw is a function of the seed and step
(partitionable threefry), so each process computes only its rows of the same
global batch:

* the losses logged are bitwise equal and the parameters equal to ``ATOL``:
  the gradient all-reduce crosses processes through gloo, which sums the 4
  devices' partial gradients in another order than XLA's in-process
  reduction, so float32 results differ in the last bits (about 3e-8 after 6
  steps). A process that trained on another process's rows, or on rows of its
  own twice, changes the parameters by about ``lr = 1e-3`` per step;
* the samples are bitwise equal (chains are independent: no cross-process sums).

The training run is first killed: ``kill -9`` of process 1 once a checkpoint
exists ends process 0 within seconds (``--heartbeat_timeout_s=5``), and
rerunning both resumes from the last checkpoint.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from compdiff import distributed
from compdiff.data import images
from compdiff.models.loading import load_params

_ROOT = pathlib.Path(__file__).resolve().parent.parent
ATOL = 1e-6  # see the module docstring: all-reduce order, not data
_CONFIG = ["--config=configs/models/toy2d.py:dataset=ring,param=eps", "--config.model.hidden=32",
           "--config.model.num_blocks=2", "--config.schedule.num_levels=20",
           "--config.train.batch_size=64", "--config.train.log_every=2",
           "--config.train.checkpoint_every=2"]
_SAMPLE = ["--model=ring={workdir}", "--sampler=ula", "--steps_per_level=2", "--num=64",
           "--noverdict", "--seed=3"]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               PYTHONPATH=str(_ROOT))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(script: str, args: list[str], processes: int, log_dir: pathlib.Path,
           tag: str) -> list[tuple[subprocess.Popen, pathlib.Path]]:
    """``processes`` copies of ``scripts/<script>`` (one 4-device process when 1)."""
    port, started = _free_port(), []
    for i in range(processes):
        extra = [] if processes == 1 else [
            f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
            f"--process_id={i}", "--heartbeat_timeout_s=5", "--init_timeout_s=60"]
        log = log_dir / f"{tag}.{i}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, f"scripts/{script}", *args, *extra], cwd=_ROOT,
                env=_env(4 // processes), stdout=out, stderr=subprocess.STDOUT)
        started.append((proc, log))
    return started


def _finish(started, timeout: float = 120) -> list[str]:
    logs = []
    for proc, log in started:
        rc = proc.wait(timeout=timeout)
        logs.append(log.read_text())
        assert rc == 0, f"{log} (exit {rc}):\n{logs[-1][-3000:]}"
    return logs


def _run(script, args, processes, log_dir, tag) -> list[str]:
    return _finish(_start(script, args, processes, log_dir, tag))


def _steps(workdir: pathlib.Path) -> list[int]:
    ckpts = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() \
        else []


def _params(workdir: pathlib.Path):
    return jax.tree.leaves(load_params(str(workdir), use_ema=False)[2])


def test_two_processes_equal_one_and_survive_a_kill(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"

    # 1. Two processes train "forever"; kill -9 process 1 once step 4 is checkpointed.
    started = _start("train.py", [*_CONFIG, "--config.train.steps=1000000",
                                  f"--workdir={two}"], 2, tmp_path, "killed")
    deadline = time.time() + 90
    while 4 not in _steps(two):
        assert time.time() < deadline and started[0][0].poll() is None, \
            started[0][1].read_text()[-3000:]
        time.sleep(0.1)
    started[1][0].send_signal(signal.SIGKILL)
    t_kill = time.time()
    rc = started[0][0].wait(timeout=60)
    waited = time.time() - t_kill
    survivor = started[0][1].read_text()
    assert rc != 0
    assert "another task died" in survivor or "heartbeat" in survivor, survivor[-3000:]
    assert waited < 30, f"process 0 took {waited:.0f}s to stop after process 1 died"

    # 2. Rerunning both resumes from the last checkpoint and trains 2 more steps.
    resumed_from = _steps(two)[-1]
    steps = resumed_from + 2
    logs = _run("train.py", [*_CONFIG, f"--config.train.steps={steps}", f"--workdir={two}"],
                2, tmp_path, "resumed")
    assert f"Resuming from step {resumed_from}" in logs[0]
    assert "Resuming" not in logs[1]  # only process 0 logs progress
    assert os.listdir(two / "tb")  # TensorBoard events, from process 0

    # 3. One process with 4 devices, uninterrupted, the same number of steps.
    _run("train.py", [*_CONFIG, f"--config.train.steps={steps}", f"--workdir={one}"], 1,
         tmp_path, "one")
    records = [[json.loads(line) for line in open(w / "metrics.jsonl")] for w in (two, one)]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]] == \
        list(range(2, steps + 1, 2))  # each logged once, the killed run's extra lines dropped
    assert [r["loss"] for r in records[0]] == [r["loss"] for r in records[1]]
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(_params(two), _params(one))]
    assert max(diffs) <= ATOL, f"parameters differ by up to {max(diffs):.2e}"

    # 4. Sampling the same model: chains sharded over 2 processes = over 4 local devices.
    out = {}
    for processes in (2, 1):
        prefix = tmp_path / f"samples{processes}"
        args = [a.format(workdir=two) for a in _SAMPLE] + [f"--out={prefix}"]
        logs = _run("sample.py", args, processes, tmp_path, f"sample{processes}")
        out[processes] = np.load(f"{prefix}.npz")["x"]
        assert "wrote" in logs[0] and (processes == 1 or "wrote" not in logs[1])
    assert out[2].shape == (64, 2)
    np.testing.assert_array_equal(out[2], out[1])


def test_image_batches_split_one_stream_over_processes():
    """Process i of P reads rows i B/P .. (i + 1) B/P - 1 of the 1-process batch, no more."""
    source = [{"x": np.full(3, k, np.float32)} for k in range(10)]  # record k holds k

    def example(record, rng):  # random per example: the stream's seeds must line up too
        return {"x": record["x"] + np.float32(rng.uniform())}

    one = images.ImageBatches(source, example, batch_size=4, seed=7, processes=1, index=0)
    for processes in (2, 4):
        shards = [images.ImageBatches(source, example, batch_size=4, seed=7,
                                      processes=processes, index=i) for i in range(processes)]
        for n in (0, 1, 2, 3, 7):  # 10 records, batch 4: batches 2, 4 and 7 cross epochs
            rows = np.concatenate([s.get(n)["x"] for s in shards])
            np.testing.assert_array_equal(rows, one.get(n)["x"], err_msg=f"P={processes} n={n}")
        # Training reads them through grain's threads from the step it resumes at.
        np.testing.assert_array_equal(np.asarray(next(shards[-1].iterate(7))["x"]),
                                      shards[-1].get(7)["x"])


@pytest.fixture
def parsed_flags():
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver():
        yield


def test_explicit_flags_are_checked(parsed_flags):
    cases = [({"num_processes": 2}, "missing --coordinator_address, --process_id"),
             ({"coordinator_address": "localhost", "num_processes": 2, "process_id": 0},
              "HOST:PORT"),
             ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, r"0\.\.1"),
             ({"coordinator_address": "h:1", "num_processes": 0, "process_id": 0}, "positive")]
    for values, message in cases:
        with flagsaver.flagsaver(**values), pytest.raises(ValueError, match=message):
            distributed.initialize()
    with flagsaver.flagsaver(coordinator_address="h:1", num_processes=1, process_id=0):
        assert distributed.initialize() is False  # one process: nothing to join


def test_tpu_slices_initialize_only_with_several_hosts(parsed_flags, monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(distributed, "_quiet_others", lambda: None)
    real_find_spec = distributed.importlib.util.find_spec
    monkeypatch.setattr(distributed.importlib.util, "find_spec",
                        lambda name: object() if name == "libtpu" else real_find_spec(name))
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0")  # a single-host TPU VM (v4-8)
    assert distributed.initialize() is False and not calls
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")  # a v4-32 slice: 4 hosts
    assert distributed.initialize() is True
    assert calls == [{"heartbeat_timeout_seconds": 30, "initialization_timeout": 300}]
