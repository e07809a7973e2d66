"""Process-wide runtime settings for the entrypoints: XLA's CPU threads (opt-in).

On a small CPU machine, XLA's CPU client splits each computation over a pool
of one thread per core and waits for every piece. When another process holds
a core at a higher priority (a host stealing the vCPU, a niced-down job),
the piece whose thread sits on that core waits for it, and small jitted
evaluations run about 10x slower. Running XLA's CPU work on one thread that
the OS can move to the free core can keep the speed, but on an idle 2-core
machine it costs about 25% at batch 1000 (measurements and the conditions
under which it did and did not help: docs/cpu_contention.md), so it is not
the default. ``COMPDIFF_CPU_THREADS=1`` turns it on for the entrypoints
(scripts/*.py call :func:`configure_cpu` first thing in ``main``):

* ``PJRT_NPROC=1``: one thread in XLA's CPU pools (XLA reads it when the CPU
  client is created; ``NPROC`` is read as a fallback);
* ``--xla_cpu_multi_thread_eigen=false`` in ``XLA_FLAGS``: matmuls run on the
  thread that runs the computation.

A setting the user already made wins: an ``XLA_FLAGS`` entry for the same
flag, or ``PJRT_NPROC`` / ``NPROC`` in the environment. Nothing happens when
the run may use an accelerator (``JAX_PLATFORMS`` names one, or one is
installed and no platform is named). ``PJRT_NPROC`` is left alone when the
process asks for several CPU devices, and the device count is never changed.

Separately, and by default: :func:`avoid_cpu_scheduler_deadlock` (called when
``compdiff`` is imported) turns off XLA's concurrency-optimized CPU scheduler.
On this 2-core machine with jaxlib 0.10.2 it deadlocks some scans: annealed
ULA on a full-covariance 128-dimensional ``GaussianMixture`` oracle (10
chains, 10 levels, one step per level) left every thread waiting on a futex
forever, while the same program finished in 2 s pinned to one core or with
``--xla_cpu_enable_concurrency_optimized_scheduler=false``
(``tests/test_hang.py`` runs it in a subprocess with a timeout).
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import mmap
import os
import pkgutil
import re
import warnings

import jax

OPT_IN = "COMPDIFF_CPU_THREADS"
XLA_CPU_FLAGS = {"xla_cpu_multi_thread_eigen": "false"}
THREADS_ENV = "PJRT_NPROC"
DEADLOCK_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


def _jaxlib_knows(flag: str) -> bool:
    """Whether this jaxlib's binaries define ``flag``: XLA aborts on an unknown ``XLA_FLAGS``
    entry, and the scheduler flag is newer than the oldest jaxlib we support."""
    import jaxlib

    needle = flag.encode()
    for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*.so")):
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                continue
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as binary:
                if binary.find(needle) >= 0:
                    return True
    return False


def avoid_cpu_scheduler_deadlock() -> bool:
    """Adds ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` to ``XLA_FLAGS``.

    Returns whether it did. Nothing changes when the user set the flag, when the
    backend has already started (flags are read once), or when this jaxlib does
    not know the flag.
    """
    from jax._src import xla_bridge  # no public way to ask without starting the backend

    xla_flags = os.environ.get("XLA_FLAGS", "")
    if (DEADLOCK_FLAG in _flag_names(xla_flags) or xla_bridge.backends_are_initialized()
            or not _jaxlib_knows(DEADLOCK_FLAG)):
        return False
    os.environ["XLA_FLAGS"] = f"{xla_flags.strip()} --{DEADLOCK_FLAG}=false".strip()
    return True

_warned = False


def configure_cpu() -> dict[str, str]:
    """Applies the settings above when ``COMPDIFF_CPU_THREADS=1``; returns what it set.

    Call it at the start of ``main``, before anything touches a device. A no-op
    (returning ``{}``) unless opted in, when the run may use an accelerator, or
    once the backend has started (then it warns, once).
    """
    global _warned
    choice = os.environ.get(OPT_IN, "").strip().lower()
    if choice in ("", "default"):
        return {}
    if choice != "1":
        raise ValueError(f"{OPT_IN}={choice!r}: use 1 (one XLA CPU thread) or default")
    from jax._src import xla_bridge  # no public way to ask without starting the backend

    if xla_bridge.backends_are_initialized():
        if not _warned:
            _warned = True
            warnings.warn("compdiff.runtime.configure_cpu() was called after the JAX backend "
                          "started; XLA's CPU thread settings are unchanged",
                          RuntimeWarning, stacklevel=2)
        return {}
    if not _cpu_only():
        return {}
    applied = {}
    xla_flags = os.environ.get("XLA_FLAGS", "")
    given = _flag_names(xla_flags)
    extra = [f"--{name}={value}" for name, value in XLA_CPU_FLAGS.items() if name not in given]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([xla_flags.strip(), *extra]).strip()
        applied["XLA_FLAGS"] = " ".join(extra)
    if (THREADS_ENV not in os.environ and "NPROC" not in os.environ
            and _cpu_device_count(xla_flags) == 1):
        os.environ[THREADS_ENV] = "1"
        applied[THREADS_ENV] = "1"
    return applied


def _flag_names(xla_flags: str) -> set[str]:
    """The flag names in an ``XLA_FLAGS`` string (``--name=value`` or ``--name``)."""
    return {token.lstrip("-").split("=", 1)[0] for token in xla_flags.split()
            if token.startswith("-")}


def _cpu_device_count(xla_flags: str) -> int:
    """The CPU devices this process will create, from the flags that force a count."""
    counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)", xla_flags)
    count = int(counts[-1]) if counts else 1
    configured = jax.config.jax_num_cpu_devices
    return configured if configured is not None and configured > 0 else count


def _cpu_only() -> bool:
    """Whether JAX can only run on the CPU here, decided without starting a backend."""
    platforms = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or ""
    if platforms:
        return all(p.strip() in ("cpu", "") for p in platforms.split(","))
    if importlib.util.find_spec("libtpu") is not None:
        return False
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    try:
        import jax_plugins
    except ImportError:
        return True
    return not any(pkgutil.iter_modules(jax_plugins.__path__))
