"""Orbax checkpoints of a work directory: atomic saves, cleanup after a kill, restore with fallback.

Saves are atomic: orbax writes checkpoint ``N`` into ``N.orbax-checkpoint-tmp-<time>``
and renames it to ``N`` once complete, so a kill mid-save loses that save
only; :func:`remove_unfinished_saves` deletes such leftovers under the work
directory's lock. :func:`restore_newest` restores the newest checkpoint that
restores, with one warning line per damaged newer one (moved aside to
``N.corrupt`` when training, left in place when only reading), and one
``ValueError`` naming every reason when none does.

Written by hand around orbax's ``CheckpointManager`` because orbax restores
only the step it is asked for, and a failed restore of one leaves
tensorstore reads completing into a closed event loop (:class:`_DrainingLoop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding

from compdiff import distributed


def open_manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    directory = os.path.join(workdir, "checkpoints")
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                               save_interval_steps=0, max_to_keep=None)
    else:  # not cleanup_tmp_directories: see remove_unfinished_saves
        options = ocp.CheckpointManagerOptions(max_to_keep=keep)
    return ocp.CheckpointManager(directory, options=options)


# Orbax's atomicity_types.TMP_DIR_SUFFIX: a save is written to N<suffix>[-time], renamed to N.
_TMP_DIR_SUFFIX = ".orbax-checkpoint-tmp"


def remove_unfinished_saves(workdir: str) -> None:
    """Deletes the tmp directories of saves that a kill interrupted.

    Done here, at once, under the work directory's lock (so no save is in
    flight), rather than by orbax's ``cleanup_tmp_directories``: that runs in
    the background of each new manager, and two of them (the fallback in
    :func:`restore_newest` opens a second) race to rmtree the same
    directory, failing the first save with FileNotFoundError.
    """
    directory = os.path.join(workdir, "checkpoints")
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if _TMP_DIR_SUFFIX in name:
                shutil.rmtree(os.path.join(directory, name))


def _failure_reason(e: BaseException) -> str:
    """One line for a failed restore: the innermost cause, whose message is the specific one.

    Orbax wraps tensorstore errors in messages that dump the whole store spec.
    """
    while e.__cause__ is not None:
        e = e.__cause__
    line = (str(e).strip().splitlines() or [""])[0]
    line = line.split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {line[:300]}"


class _DrainingLoop(asyncio.SelectorEventLoop):
    """An event loop that lets its pending tasks finish before it closes.

    Orbax runs a restore on a fresh loop and closes it as soon as one array
    read fails, while the reads of the other arrays are in flight: tensorstore
    then completes them into the closed loop, printing "Event loop is closed"
    tracebacks and "Task exception was never retrieved" errors from its threads
    for seconds afterwards (the noise around a corrupt checkpoint). Draining
    first lets every read fail or finish inside the loop.
    """

    def close(self) -> None:
        if not self.is_closed() and not self.is_running():
            pending = asyncio.all_tasks(self)
            if pending:
                self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        super().close()


_draining_users = [0]  # how many threads are inside _draining_event_loops
_draining_lock = threading.Lock()


@contextlib.contextmanager
def _draining_event_loops() -> Iterator[None]:
    """Makes ``asyncio.new_event_loop`` (orbax's restore loops) return a :class:`_DrainingLoop`.

    Set on the default policy's instance (over its class attribute) while any
    thread restores; harmless to other threads' loops in the meantime.
    """
    policy = asyncio.get_event_loop_policy()
    if not isinstance(policy, asyncio.DefaultEventLoopPolicy):
        yield  # an unusual policy (uvloop, ...): leave it alone, at worst the noise returns
        return
    with _draining_lock:
        _draining_users[0] += 1
        policy._loop_factory = _DrainingLoop
    try:
        yield
    finally:
        with _draining_lock:
            _draining_users[0] -= 1
            if not _draining_users[0]:
                del policy._loop_factory


def _restore(manager: ocp.CheckpointManager, step: int, abstract: Any,
             sharding: NamedSharding) -> Any:
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                            abstract)
    with _draining_event_loops():
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def move_aside(path: str) -> str:
    """Renames a checkpoint that does not restore to ``N.corrupt`` (``N.corrupt.2``, ...).

    Not a step name to orbax, so the next save may reuse the step; kept, never
    deleted, so that whoever cares can inspect it.
    """
    target, k = f"{path}.corrupt", 1
    while os.path.exists(target):
        k += 1
        target = f"{path}.corrupt.{k}"
    os.rename(path, target)
    return target


def restore_newest(workdir: str, abstract: Any, sharding: NamedSharding, *,
                    keep: int = 3, read_only: bool = False
                    ) -> tuple[ocp.CheckpointManager, int, Any]:
    """The newest checkpoint that restores: ``(manager, step, state)``.

    A checkpoint that fails is skipped for the next older one, with one
    warning line (its path, the reason, what became of it). Training
    (``read_only=False``) then moves the failed newer ones aside
    (:func:`move_aside`) and returns a fresh manager: the old one still
    lists the moved steps, and would silently skip saving them again (seen
    with orbax 0.12) or try to delete them. Nothing is moved unless an older
    checkpoint restored: when none does, the cause may be ours (another
    orbax, a wrong config) rather than the files, so we raise one ValueError
    naming the directory and every reason, and leave the directory as it was.
    ``load_model`` (``read_only=True``, perhaps beside a running training)
    never moves anything. The caller closes the returned manager.
    """
    manager = open_manager(workdir, keep=keep, read_only=read_only)
    failed: list[tuple[str, str]] = []  # (path, reason), newest first
    found: tuple[int, Any] | None = None
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                found = step, _restore(manager, step, abstract, sharding)
                break
            except Exception as e:  # orbax and tensorstore raise many types for bad files
                failed.append((os.path.join(str(manager.directory), str(step)),
                               _failure_reason(e)))
    finally:
        if found is None or failed:
            manager.close()
    if found is None and not failed:
        raise FileNotFoundError(f"no checkpoints in {manager.directory}")
    if found is None:
        reasons = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in failed)
        raise ValueError(f"no checkpoint in {manager.directory} restores (corrupt, or not "
                         f"written by this config): {reasons}")
    if not failed:
        return manager, *found
    for path, reason in failed:  # one line each, once we know what becomes of it
        if read_only:
            fate = "left in place"
        elif distributed.is_main():  # every process of a multi-host run finds it; one moves it
            fate = f"moved to {move_aside(path)}"
        else:
            fate = "moved aside by process 0"
        logging.warning("Checkpoint %s does not restore (%s); %s, using step %d",
                        path, reason, fate, found[0])
    if not read_only:
        distributed.sync("compdiff.checkpoints: failed checkpoints moved aside")
    return open_manager(workdir, keep=keep, read_only=read_only), *found
