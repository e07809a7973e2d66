"""Multi-host runs on JAX's own runtime: one process per host, the same program on each.

Every entrypoint calls :func:`initialize` first thing in ``main`` (after
``configure_cpu``). It calls ``jax.distributed.initialize`` when the run spans
several processes and does nothing on one:

* explicitly, from the flags this module defines (so every script that imports
  it has them): ``--coordinator_address=HOST:PORT --num_processes=N
  --process_id=I`` on each of the N processes (CPU or GPU clusters, or N
  processes on one machine);
* automatically on a Cloud TPU pod slice: when no flag is given and the TPU VM
  has several workers (``TPU_PROCESS_ADDRESSES`` / ``TPU_WORKER_HOSTNAMES``,
  else the VM's ``worker-network-endpoints`` metadata), JAX detects the cluster
  itself. A single-host TPU VM, a CPU and a GPU machine stay single-process.

After it, ``jax.devices()`` lists every process's devices, so a
``Mesh(jax.devices(), ...)`` spans the whole cluster: a jitted step whose
batch is sharded over it runs as one SPMD program, each process computing its
own rows, and XLA all-reduces what crosses processes (gradients of replicated
parameters). Arrays sharded over all processes are not addressable from one;
:func:`gather` brings one to numpy on every process. :func:`is_main` (process
0) decides who writes logs, metrics and figures; every process takes part in
computations and in orbax's checkpoint saves and restores.

A process that dies ends the others: the coordination service misses its
heartbeats for ``--heartbeat_timeout_s`` seconds (or a collective fails at
once) and the survivors stop with an error naming the lost task.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.request

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: HOST:PORT of process 0's coordinator "
    "(give with --num_processes and --process_id; not needed on a TPU pod slice).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-host: how many processes the run spans.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's index in 0..num_processes-1.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 30, "Multi-host: seconds without a heartbeat after which a "
    "process counts as dead and the others stop.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout_s", 300, "Multi-host: seconds to wait for every process to connect.")

# The metadata server of a GCE VM (a TPU VM is one).
_METADATA_URL = ("http://{host}/computeMetadata/v1/instance/attributes/"
                 "worker-network-endpoints")


def _tpu_worker_count() -> int:
    """How many hosts the TPU slice this VM belongs to has (1 off a TPU VM, or unknown).

    A TPU VM's libtpu is installed; the environment or the VM's metadata
    lists the slice's workers, one per host, comma-separated.
    """
    if importlib.util.find_spec("libtpu") is None:
        return 1
    for name in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):
        if os.environ.get(name):
            return len([w for w in os.environ[name].split(",") if w.strip()])
    if os.environ.get("TPU_SKIP_MDS_QUERY") is not None:
        return 1
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
    request = urllib.request.Request(_METADATA_URL.format(host=host),
                                     headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            endpoints = response.read().decode()
    except OSError as e:  # not a GCE VM, or no such key: a single host
        logging.info("No TPU worker list in the VM metadata (%s): single host", e)
        return 1
    return max(1, len([w for w in endpoints.split(",") if w.strip()]))


def _explicit() -> tuple[str, int, int] | None:
    """``(address, num_processes, process_id)`` from the flags; None when none is given
    (or the flags were not parsed: a library call outside an entrypoint)."""
    if not flags.FLAGS.is_parsed():
        return None
    given = {"coordinator_address": _COORDINATOR.value, "num_processes": _NUM_PROCESSES.value,
             "process_id": _PROCESS_ID.value}
    if all(v is None for v in given.values()):
        return None
    missing = [f"--{k}" for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"a multi-host run needs --coordinator_address, --num_processes and "
                         f"--process_id together; missing {', '.join(missing)}")
    address, num, index = _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    if num < 1:
        raise ValueError(f"--num_processes must be positive, got {num}")
    if not 0 <= index < num:
        raise ValueError(f"--process_id must be in 0..{num - 1} (--num_processes={num}), "
                         f"got {index}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--coordinator_address wants HOST:PORT, got {address!r}")
    return address, num, index


def initialize() -> bool:
    """Joins the multi-host run this process belongs to; returns whether there is one.

    Call before anything touches a device. Explicit flags win; without them
    a multi-host TPU slice is detected; otherwise (one process) nothing
    happens. Idempotent: a second call does nothing.
    """
    if jax.distributed.is_initialized():
        return True
    explicit = _explicit()
    parsed = flags.FLAGS.is_parsed()
    timeouts = {"heartbeat_timeout_seconds": _HEARTBEAT.value if parsed else _HEARTBEAT.default,
                "initialization_timeout": _INIT_TIMEOUT.value if parsed else _INIT_TIMEOUT.default}
    if explicit is not None:
        address, num, index = explicit
        if num == 1:
            return False
        logging.info("Joining a %d-process run as process %d (coordinator %s)", num, index,
                     address)
        jax.distributed.initialize(address, num, index, **timeouts)
        _quiet_others()
        return True
    workers = _tpu_worker_count()
    if workers <= 1:
        return False
    logging.info("TPU slice with %d hosts: initializing jax.distributed", workers)
    jax.distributed.initialize(**timeouts)  # JAX reads the cluster from the TPU VM
    _quiet_others()
    return True


def _quiet_others() -> None:
    """Only process 0 logs progress: the others log warnings and errors only."""
    if not is_main():
        logging.set_verbosity(logging.WARNING)


def is_main() -> bool:
    """Whether this is process 0, the one that writes logs, metrics and figures."""
    return jax.process_index() == 0


def one_step_in_flight() -> bool:
    """Whether a loop must wait for each step before dispatching the next: on CPUs of
    several processes.

    There XLA runs the cross-process collectives in gloo, and with many steps
    dispatched ahead both processes hung in a gloo all-reduce (seen with jax
    0.10.2, 2 processes x 2 CPU devices, 200 steps without a log in between);
    one step at a time runs.
    """
    return jax.process_count() > 1 and jax.default_backend() == "cpu"


def gather(x: jax.Array | np.ndarray) -> np.ndarray:
    """The whole of ``x`` as numpy on every process (every process must call it).

    ``x`` may be sharded over every process's devices (not addressable from
    one); a fully addressable array or a numpy array comes back as it is.
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
