"""One process per work directory: an exclusive lock held for a whole run.

Two trainings (or table builds) writing one work directory would interleave
checkpoints and metrics, and one's orbax cleanup deletes the other's
unfinished saves. :func:`lock` makes the second fail at once with
:class:`WorkdirInUse`.

The lock is ``fcntl.flock`` on ``<workdir>/LOCK``, not the file's existence:
the kernel releases a flock when its process dies (kill -9 included), so a
stale lock needs no pid probing, which could not see other hosts anyway. The
file holds the holder's pid, host and start time, for the error message, and
is emptied (not deleted) on release: deleting it would let a process that
opened the old file and one that creates a new one both hold "the" lock. A
lock we acquire over a non-empty file is one whose holder died without
releasing it; we take it over with one warning line naming that holder.

The processes of one multi-host run share the directory: process ``i > 0``
locks ``LOCK.<i>`` (``lock(workdir, process=i)``), so they do not refuse each
other, while a second run's process ``i`` fails on the first run's.

Locks are per directory: a run that locks ``root`` may start runs that lock
``root/models/x`` (table2d does), but locking one directory twice, even in
one process, fails (flock locks are per open file, not per process).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

from absl import logging

LOCK_FILE = "LOCK"


class WorkdirInUse(RuntimeError):
    """Another live process holds the work directory's lock."""


def _describe(holder: dict) -> str:
    started = holder.get("start")
    since = (time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started))
             if isinstance(started, (int, float)) else "")
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


def _read_holder(fd: int) -> dict | None:
    """The holder recorded in the open LOCK file, None if it is empty; {} if unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    if not text:
        return None
    try:
        holder = json.loads(text)
    except ValueError:  # torn by a kill mid-write: still a dead holder
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def lock(workdir: str, process: int = 0) -> Iterator[None]:
    """Holds ``workdir``'s exclusive lock for the ``with`` block (creating the directory).

    ``process``: this process's index in a multi-host run (0 alone). Raises
    :class:`WorkdirInUse` at once, naming the holder's pid and host, if a live
    process holds it.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE if process == 0 else f"{LOCK_FILE}.{process}")
    # O_CLOEXEC: a subprocess we start must not inherit (and so keep) our lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd) or {}
            raise WorkdirInUse(f"{workdir} is in use by {_describe(holder)} (it holds "
                               f"{path}); wait for it to finish or use another "
                               f"workdir") from None
        stale = _read_holder(fd)
        if stale is not None:
            logging.warning("Taking over the lock of %s from %s, which died without "
                            "releasing it", workdir, _describe(stale))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # empty = released cleanly (see the module docstring)
    finally:
        os.close(fd)  # releases the flock
