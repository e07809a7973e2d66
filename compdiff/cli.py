"""One clear line per user error: ``run(main)`` replaces ``absl.app.run(main)`` in scripts/.

A user who mistypes a flag, names an unknown sampler or points at a missing
checkpoint needs the one sentence that says what is wrong, not absl's whole
usage text or a forty-line traceback that ends in the same sentence. So
:func:`run` parses the flags and calls ``main`` like absl does, and turns a
user error into ``<script>: error: <message>`` on stderr and exit status 2
(the status argparse and most Unix tools use for bad usage). User errors are:

* bad flags (``absl.flags.Error``), including a bad config variant that
  ml_collections' ``config_flags`` hits while it loads the config file at
  flag-parse time (it buries the real message in a traceback inside the
  flag error's text; the innermost message is printed instead);
* ``absl.app.UsageError``, ``ValueError`` (the library's convention for bad
  input: unknown names, malformed expressions, a mixture of score-only
  models, mismatched dimensions, non-positive sizes) and ``OSError``
  (missing or unreadable files and checkpoints);
* ``compdiff.workdir.WorkdirInUse`` (another run holds the work directory).

Any other exception is a bug and keeps its traceback. ``--verbose`` (or
``COMPDIFF_TRACEBACK=1``) prints the traceback of a user error too, for a
user error that is really a bug in disguise.

:func:`run` also hides log lines that every normal run would print and that
say nothing to the user: orbax's INFO chatter, its "Given directory is read
only" WARNING when ``load_model`` opens checkpoints read-only (as
intended), and jax's INFO line about not finding a TPU.

:func:`start` is the first line of every entrypoint's ``main``: no stray arguments,
XLA's CPU settings (:func:`compdiff.runtime.configure_cpu`), the multi-host runtime
(:func:`compdiff.distributed.initialize`) and quiet checkpoint logs.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags, logging

from compdiff import distributed, runtime
from compdiff.training import writers
from compdiff.workdir import WorkdirInUse

TRACEBACK_ENV = "COMPDIFF_TRACEBACK"
USAGE_EXIT = 2
HINT = "(--help lists the flags)"

_VERBOSE = flags.DEFINE_bool("verbose", False, "On a user error (bad flag, missing file, ...) "
                             f"also print the traceback; env {TRACEBACK_ENV}=1 does the same.")

# (source file path fragment, highest level dropped, message prefix) of the lines hidden.
_QUIET = (
    ("/orbax/", std_logging.WARNING, "Given directory is read only"),
    ("/jax/_src/xla_bridge", std_logging.INFO, "Unable to initialize backend"),
)


class _Escaped(Exception):
    """Carries a UsageError out of ``main`` past absl, which would print the whole usage text."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def keep_record(record: std_logging.LogRecord) -> bool:
    """Logging filter: False for the uninformative lines listed in the module docstring."""
    path = record.pathname.replace(os.sep, "/")
    if "/orbax/" in path and record.levelno < std_logging.WARNING:
        return False
    for fragment, level, prefix in _QUIET:
        if (record.levelno <= level and fragment in path
                and str(record.msg).startswith(prefix)):
            return False
    return True


def quiet_logs() -> None:
    """Installs :func:`keep_record` on absl's console handler (idempotent)."""
    handler = logging.get_absl_handler()
    if keep_record not in handler.filters:
        handler.addFilter(keep_record)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types reported as one line; every other type is a bug."""
    return (app.UsageError, flags.Error, ValueError, OSError, WorkdirInUse)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or during, outermost first."""
    seen = [error]
    while True:
        last = seen[-1]
        nxt = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if nxt is None or nxt in seen:
            return seen
        seen.append(nxt)


def message(error: BaseException) -> str:
    """The error's message on one line.

    A message that embeds a traceback (ml_collections' config loader does that)
    is replaced by the innermost chained exception's message, after the flag
    it belongs to.
    """
    text = str(error).strip()
    if "Traceback (most recent call last)" in text:
        head = text.split("\n", 1)[0]
        head = head.split("Error whilst parsing config file", 1)[0].strip().rstrip(":").strip()
        inner = [e for e in _chain(error)[1:] if str(e).strip()
                 and "Traceback (most recent call last)" not in str(e)]
        if inner:
            text = f"{head}: {inner[-1]}" if head else str(inner[-1])
        else:  # no chain to read: the last line of the embedded traceback is the error
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            text = f"{head}: {lines[-1]}" if head else lines[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def _verbose(argv: list[str]) -> bool:
    """``--verbose`` or ``COMPDIFF_TRACEBACK=1``; read from argv when flags failed to parse."""
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    if flags.FLAGS.is_parsed():
        return bool(_VERBOSE.value)
    verbose = False
    for arg in argv[1:]:
        if arg == "--":
            break
        name, _, value = arg.lstrip("-").partition("=")
        if name == "verbose":
            verbose = value.lower() not in ("false", "0", "no", "f")
        elif name == "noverbose":
            verbose = False
    return verbose


def report(error: BaseException, argv: list[str]) -> NoReturn:
    """Prints ``<script>: error: <message>`` (after the traceback if verbose); exits 2."""
    if _verbose(argv):
        traceback.print_exception(error)
    hint = f" {HINT}" if isinstance(error, flags.Error | app.UsageError) else ""
    prog = os.path.basename(argv[0]) if argv else "compdiff"
    sys.stderr.write(f"{prog}: error: {message(error)}{hint}\n")
    sys.stderr.flush()
    sys.exit(USAGE_EXIT)


def _config_error(error: BaseException) -> str:
    """Why ml_collections could not load a config file, without its search report."""
    text = " ".join(str(error).split())
    return text[text.index("[Errno"):] if "[Errno" in text else text


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, minus its own error printing (the errors reach :func:`run`).

    Also raises, as flag errors, what ml_collections leaves for later: an
    override of a config field that does not exist (an AttributeError over a
    KeyError) and a config file it could not load (kept in the flag's value
    until first use, deep inside ``main``).
    """
    try:
        remaining = flags.FLAGS(argv)
    except SystemExit as e:  # only the help flags exit while parsing; asked-for help is success
        raise SystemExit(0 if e.code == 1 else e.code) from None
    except (AttributeError, KeyError) as e:
        keys = [x for x in _chain(e) if isinstance(x, KeyError) and x.args]
        frames = traceback.extract_tb(e.__traceback__)
        if not keys or not any("config_flags" in f.filename for f in frames):
            raise
        name, _, hint = str(keys[0].args[0]).partition("\n")
        hint = f". {hint.strip()}" if hint.strip() else ""
        raise flags.IllegalFlagValueError(f"unknown config field {name}{hint}") from e
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        error = getattr(flag.value, "_error", None)
        if type(flag.value).__name__ == "_ErrorConfig" and isinstance(error, BaseException):
            raise flags.IllegalFlagValueError(
                f"flag --{flag.name}: cannot load the config file: {_config_error(error)}"
            ) from error
    return remaining


def start(argv: list[str], *, uses_jax: bool = True) -> None:
    """Every entrypoint's preamble: a UsageError for positional arguments; then, unless
    the script never starts JAX (``uses_jax=False``: a launcher), the CPU settings and
    the multi-host runtime, in that order; and orbax's checkpoint logs kept quiet."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if uses_jax:
        runtime.configure_cpu()
        distributed.initialize()
    writers.quiet_orbax_logs()


def run(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> NoReturn:
    """``absl.app.run(main)`` with user errors as one line and exit status 2; never returns."""
    argv = list(sys.argv if argv is None else argv)
    quiet_logs()
    if argv:  # --help lists the main module's key flags: list ours there too
        for name in (_VERBOSE.name,):
            flags.FLAGS.register_key_flag_for_module(argv[0], flags.FLAGS[name])

    def guarded(args: list[str]) -> Any:
        try:
            return main(args)
        except app.UsageError as e:  # absl.app.run would print the full usage text
            raise _Escaped(e) from e

    try:
        app.run(guarded, argv=argv, flags_parser=_parse_flags)
    except _Escaped as escaped:
        report(escaped.error, argv)
    except Exception as e:
        if isinstance(e, user_error_types()):
            report(e, argv)
        raise
    sys.exit(0)  # app.run always exits; this line only satisfies the type checker
