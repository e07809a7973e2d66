"""Config-file sweeps (big_vision style): points, runs, resumption and the collated table.

A config module (``configs/X.py``) declares a sweep next to its ``get_config``:

    SWEEP_SCRIPT = "scripts/run.py"           # the entrypoint run once per point
    SWEEP_METRICS = "table2d.json"            # its final metrics file, in the point's workdir
    SWEEP_METRIC_KEYS = ("ll", "mmd")         # optional: the table's metric columns, in order

    def get_sweep(name: str) -> list[dict]:   # override dicts, dotted keys -> values
        return sweep.product(sweep.values("samplers.hmc.sampler.step.a", (0.01, 0.03)),
                             sweep.values("samplers.hmc.sampler.damping", (0.0, 0.5)))

The helpers build lists of override dicts: :func:`values` (one key), :func:`fixed_point`
(one point), :func:`product` (Cartesian product: every combination, the last
argument varying fastest), :func:`zipped` (element-wise, equal lengths) and
:func:`chain` (concatenation). A point's name is made of the *swept* keys (those
with more than one value across the sweep), shortest unambiguous suffix first:
``step_a=0.01,damping=0.5``.

Running (``scripts/sweep.py``): every point runs as a subprocess of the
entrypoint with ``--config=FILE:VARIANT --workdir=DIR/<name> --config.<key>=<value>``,
stdout and stderr to ``DIR/<name>/sweep.log``. A point is *finished* when its
marker ``DIR/<name>/sweep_point.json`` exists; the marker is written last,
atomically (a temporary file renamed over it), after the entrypoint exited 0 and
its metrics file parsed. A killed sweep therefore leaves no marker for a point
that was running (however much of its metrics file it wrote), and a rerun runs
exactly the points without one. Collation reads the markers into ``DIR/sweep.csv``
and ``DIR/sweep.md``: the swept keys, then the metrics.

Metrics files: ``*.json`` holding a flat dict of scalars, or a table2d-style
``{"rows": [...]}`` (one row: its scalar fields; several: ``<composition>/<model>/
<sampler>:<field>``); ``*.jsonl``: the last line's scalars (``metrics.jsonl`` of
:mod:`compdiff.train`).
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import ml_collections

Point = dict[str, Any]
MARKER = "sweep_point.json"
LOG = "sweep.log"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LAUNCHER = './launch_tpu.sh --name="$TPU_NAME" --zone="$TPU_ZONE" --reuse'


# --- building sweeps --------------------------------------------------------------------------
def values(key: str, vals: Iterable[Any]) -> list[Point]:
    """``[{key: v} for v in vals]``: one swept key."""
    vals = list(vals)
    if not vals:
        raise ValueError(f"sweep key {key!r} has no values")
    return [{key: v} for v in vals]


def fixed_point(overrides: dict[str, Any]) -> list[Point]:
    """One point, e.g. the overrides every point shares: ``product(fixed_point(...), ...)``."""
    return [dict(overrides)]


def _merge(parts: Sequence[Point]) -> Point:
    merged: Point = {}
    for part in parts:
        clash = set(merged) & set(part)
        if clash:
            raise ValueError(f"sweep keys {sorted(clash)} are set twice in one point")
        merged.update(part)
    return merged


def product(*sweeps: list[Point]) -> list[Point]:
    """Every combination of one point from each sweep (the last varies fastest)."""
    return [_merge(parts) for parts in itertools.product(*sweeps)]


def zipped(*sweeps: list[Point]) -> list[Point]:
    """The i-th points of every sweep merged; the sweeps must have equal lengths."""
    lengths = [len(s) for s in sweeps]
    if len(set(lengths)) > 1:
        raise ValueError(f"zipped sweeps need equal lengths, got {lengths}")
    return [_merge(parts) for parts in zip(*sweeps)]


def chain(*sweeps: list[Point]) -> list[Point]:
    """The points of every sweep, one after another."""
    return [dict(p) for s in sweeps for p in s]


# --- the sweep of a config module --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Spec:
    """A resolved sweep: the config, its entrypoint, and named points."""

    config_file: str          # absolute path
    variant: str | None
    script: str               # absolute path of the entrypoint
    metrics_file: str         # relative to a point's workdir
    metric_keys: tuple[str, ...] | None
    points: tuple[tuple[str, Point], ...]  # (name, overrides)
    swept: tuple[str, ...]    # keys with more than one value, in first-seen order

    def config_arg(self, relative_to: str | None = None) -> str:
        path = self.config_file if relative_to is None else os.path.relpath(self.config_file,
                                                                            relative_to)
        return path if self.variant is None else f"{path}:{self.variant}"


def split_config_arg(arg: str) -> tuple[str, str | None]:
    """``"configs/x.py:variant"`` -> ``("configs/x.py", "variant")`` (ml_collections' syntax)."""
    path, sep, variant = arg.partition(".py:")
    if sep:
        return path + ".py", variant
    return arg, None


def load_module(path: str) -> ModuleType:
    """Imports a config file by path (the repository root on ``sys.path`` for ``configs.*``)."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    name = "_sweep_config_" + re.sub(r"\W", "_", os.path.abspath(path))
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _apply(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
    """Sets ``config.<key> = value``; a missing field or a wrong type is a ValueError."""
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ValueError(f"sweep key {key!r} is not in {where}: no field "
                             f"{'.'.join(parents[:i + 1])!r}")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ValueError(f"sweep key {key!r} is not in {where}")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ValueError(f"sweep key {key!r} in {where} is a group of fields, not a field")
    try:
        node[leaf] = value
    except (TypeError, ValueError) as e:
        raise ValueError(f"sweep key {key!r} = {value!r} does not fit {where}: {e}") from e


def format_value(value: Any) -> str:
    """The command-line text ml_collections' config flags parse back into ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):  # a tuple literal; strings double-quoted (shell-friendly)
        items = [json.dumps(v) if isinstance(v, str) else repr(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return str(value)


def _swept_keys(points: Sequence[Point]) -> tuple[str, ...]:
    keys = list(dict.fromkeys(k for p in points for k in p))
    return tuple(k for k in keys
                 if len({format_value(p.get(k)) if k in p else None for p in points}) > 1)


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends with."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if not any(o != key and (o == short or o.endswith("." + short)) for o in keys):
                break
        names[key] = short
    return names


def point_name(point: Point, swept: Sequence[str]) -> str:
    """``short_key=value,...`` over the swept keys, safe as a directory name."""
    short = _short_names(swept)
    text = ",".join(f"{short[k]}={format_value(point[k])}" for k in swept if k in point)
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text) or "default"


def resolve(config_arg: str, sweep_name: str) -> Spec:
    """Loads the config module and its sweep ``sweep_name``; checks every point's keys.

    Raises ValueError, before anything runs, for a module without a sweep, an
    unknown sweep name (the module's ``get_sweep`` says which exist), an empty
    sweep, a key that is not a field of the config (or a value of the wrong
    type), or two points with the same overrides.
    """
    path, variant = split_config_arg(config_arg)
    module = load_module(path)
    get_sweep: Callable[[str], list[Point]] | None = getattr(module, "get_sweep", None)
    script = getattr(module, "SWEEP_SCRIPT", None)
    if get_sweep is None or script is None:
        raise ValueError(f"config file {path!r} defines no sweep (it needs get_sweep(name) and "
                         "SWEEP_SCRIPT)")
    metrics_file = getattr(module, "SWEEP_METRICS", None)
    if metrics_file is None:
        raise ValueError(f"config file {path!r} does not name its entrypoint's metrics file "
                         "(SWEEP_METRICS)")
    points = list(get_sweep(sweep_name))
    if not points:
        raise ValueError(f"sweep {sweep_name!r} of {path!r} has no points")
    where = f"the config {config_arg}"
    base = module.get_config(variant) if variant is not None else module.get_config()
    for point in points:
        config = base.copy_and_resolve_references()
        for key, value in point.items():
            _apply(config, key, value, where)
    swept = _swept_keys(points)
    named = [(point_name(p, swept), p) for p in points]
    seen: dict[str, int] = {}
    for i, (name, _) in enumerate(named):
        if name in seen:
            raise ValueError(f"sweep {sweep_name!r} has points {seen[name]} and {i} with the "
                             f"same name {name!r} (the same overrides)")
        seen[name] = i
    script_path = script if os.path.isabs(script) else os.path.join(REPO_ROOT, script)
    if not os.path.isfile(script_path):
        raise ValueError(f"sweep entrypoint {script!r} of {path!r} does not exist")
    keys = getattr(module, "SWEEP_METRIC_KEYS", None)
    return Spec(config_file=os.path.abspath(path), variant=variant, script=script_path,
                metrics_file=metrics_file, metric_keys=tuple(keys) if keys else None,
                points=tuple(named), swept=swept)


# --- commands ---------------------------------------------------------------------------------
def command(spec: Spec, point: Point, workdir: str, python: str = sys.executable,
            relative_to: str | None = None) -> list[str]:
    """The entrypoint's argv for one point (paths relative to ``relative_to`` if given)."""
    script = spec.script if relative_to is None else os.path.relpath(spec.script, relative_to)
    return [python, script, f"--config={spec.config_arg(relative_to)}", f"--workdir={workdir}",
            *(f"--config.{k}={format_value(v)}" for k, v in point.items())]


def launch_commands(spec: Spec, workdir: str, launcher: str = DEFAULT_LAUNCHER) -> list[str]:
    """One ``launch_tpu.sh`` line per point: ``<launcher> -- python scripts/...`` (repo paths)."""
    lines = []
    for name, point in spec.points:
        argv = command(spec, point, f"{workdir.rstrip('/')}/{name}", python="python",
                       relative_to=REPO_ROOT)
        lines.append(f"{launcher} -- {shlex.join(argv)}")
    return lines


# --- metrics ----------------------------------------------------------------------------------
def _scalars(record: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in record.items():
        if isinstance(v, bool):
            out[prefix + k] = int(v)
        elif isinstance(v, int | float) or v is None:
            out[prefix + k] = v
    return out


def read_metrics(path: str) -> dict[str, Any]:
    """The scalar metrics of a finished entrypoint's metrics file (module docstring).

    Raises ValueError when the file is missing, empty or not valid JSON (a
    run that died while writing it).
    """
    if not os.path.isfile(path):
        raise ValueError(f"metrics file {path} does not exist")
    with open(path) as f:
        text = f.read()
    try:
        if path.endswith(".jsonl"):
            lines = [line for line in text.splitlines() if line.strip()]
            if not lines:
                raise ValueError("empty")
            return _scalars(json.loads(lines[-1]))
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"metrics file {path} is not complete JSON: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        rows = [r for r in data["rows"] if r.get("status", "ok") == "ok"]
        if len(rows) == 1:
            return _scalars(rows[0])
        return {k: v for r in rows for k, v in _scalars(
            r, f"{r.get('composition')}/{r.get('model')}/{r.get('sampler')}:").items()}
    if isinstance(data, dict):
        return _scalars(data)
    raise ValueError(f"metrics file {path} holds no dict of metrics")


# --- running ----------------------------------------------------------------------------------
def marker_path(workdir: str, name: str) -> str:
    return os.path.join(workdir, name, MARKER)


def is_finished(workdir: str, name: str) -> bool:
    return os.path.isfile(marker_path(workdir, name))


def write_atomically(path: str, text: str) -> None:
    """Writes ``path`` so that it either does not exist or holds all of ``text``."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the sweep process dies (Linux), so a killed sweep
    leaves no point running that a rerun would collide with (its work-directory lock)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclasses.dataclass
class _Job:
    name: str
    point: Point
    proc: subprocess.Popen
    log: Any
    start: float


def _finish(spec: Spec, workdir: str, job: _Job, argv: list[str]) -> str | None:
    """Writes the marker of a point whose entrypoint exited; returns an error or None."""
    job.log.close()
    seconds = time.time() - job.start
    log = os.path.join(workdir, job.name, LOG)
    if job.proc.returncode != 0:
        return f"{job.name}: exit status {job.proc.returncode} (log: {log})"
    try:
        metrics = read_metrics(os.path.join(workdir, job.name, spec.metrics_file))
    except ValueError as e:
        return f"{job.name}: {e} (log: {log})"
    record = {"name": job.name, "overrides": job.point, "metrics": metrics,
              "seconds": seconds, "command": argv}
    write_atomically(marker_path(workdir, job.name), json.dumps(record, indent=1))
    return None


def run(spec: Spec, workdir: str, parallel: int = 1,
        echo: Callable[[str], None] = print) -> list[str]:
    """Runs the unfinished points, ``parallel`` at a time; returns the failures' messages."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    todo = [(n, p) for n, p in spec.points if not is_finished(workdir, n)]
    done = len(spec.points) - len(todo)
    if done:
        echo(f"{done} of {len(spec.points)} points already finished: skipped")
    running: list[_Job] = []
    failures: list[str] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        while todo or running:
            while todo and len(running) < parallel:
                name, point = todo.pop(0)
                os.makedirs(os.path.join(workdir, name), exist_ok=True)
                argv = command(spec, point, os.path.join(workdir, name))
                log = open(os.path.join(workdir, name, LOG), "w")
                log.write("$ " + shlex.join(argv) + "\n")
                log.flush()
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                        env=env, preexec_fn=_die_with_parent)
                running.append(_Job(name, point, proc, log, time.time()))
                echo(f"started {name}")
            time.sleep(0.05)
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                error = _finish(spec, workdir, job, job.proc.args)
                if error:
                    failures.append(error)
                    echo(f"FAILED {error}")
                else:
                    echo(f"finished {job.name} in {time.time() - job.start:.1f}s")
    finally:
        for job in running:  # an interrupted sweep stops its points (no marker: rerun redoes them)
            job.proc.kill()
            job.proc.wait()
            job.log.close()
    return failures


def adopt(spec: Spec, workdir: str) -> list[str]:
    """Marks as finished the points without a marker whose ``.json`` metrics file is complete.

    For points run elsewhere (``--print_commands`` on a TPU VM) and copied back:
    their entrypoint wrote the metrics, but no sweep was there to write the marker.
    Only ``.json`` metrics files qualify: table2d writes its file once, at the end,
    so a complete one is a finished run; a ``metrics.jsonl`` grows while training
    runs, so a complete-looking one proves nothing. Returns the adopted names.
    """
    if not spec.metrics_file.endswith(".json"):
        return []
    adopted = []
    for name, point in spec.points:
        if is_finished(workdir, name):
            continue
        try:
            metrics = read_metrics(os.path.join(workdir, name, spec.metrics_file))
        except ValueError:
            continue
        record = {"name": name, "overrides": point, "metrics": metrics, "seconds": None,
                  "command": None, "adopted": True}
        write_atomically(marker_path(workdir, name), json.dumps(record, indent=1))
        adopted.append(name)
    return adopted


# --- collation --------------------------------------------------------------------------------
def collate(spec: Spec, workdir: str) -> tuple[list[dict], list[str]]:
    """Rows (swept keys, then metrics, then the point's ``wall_s``) of the finished points, and the
    names of the unfinished ones; writes ``sweep.csv`` and ``sweep.md`` under ``workdir``."""
    rows, missing, records = [], [], []
    for name, point in spec.points:
        if not is_finished(workdir, name):
            missing.append(name)
            continue
        with open(marker_path(workdir, name)) as f:
            records.append((point, json.load(f)))
    metric_keys = list(spec.metric_keys or dict.fromkeys(
        k for _, r in records for k in r["metrics"]))
    for point, record in records:
        row = {k: point.get(k) for k in spec.swept}
        row.update({k: record["metrics"].get(k) for k in metric_keys})
        row["wall_s"] = record["seconds"]
        rows.append(row)
    columns = [*spec.swept, *metric_keys, "wall_s"]
    with open(os.path.join(workdir, "sweep.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(workdir, "sweep.md"), "w") as f:
        f.write(markdown(rows, columns, missing))
    return rows, missing


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return format_value(value)


def markdown(rows: list[dict], columns: Sequence[str], missing: Sequence[str] = ()) -> str:
    short = _short_names([c for c in columns if "." in c])
    head = [short.get(c, c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    if missing:
        lines.append(f"\nNot finished ({len(missing)}): {', '.join(missing)}")
    return "\n".join(lines) + "\n"
