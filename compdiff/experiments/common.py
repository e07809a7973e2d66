"""The experiment protocol: an experiment computes rows; this module does the rest.

An experiment module (``compdiff/experiments/<name>.py``) defines
``run(config, workdir)``, returning its rows (or ``{"rows": [...], **extras}``), and
``markdown(result)``, the table; optionally ``claims(result)``, records of
:func:`compdiff.experiments.paired.compare`. :func:`run` then, in one place for every
table:

* holds the work directory's lock (:mod:`compdiff.workdir`) for the whole run;
* records the machine (:func:`machine`), the config, the variant and the wall time;
* appends the claims (returned by ``run`` under ``"claims"`` and by ``claims``);
* writes ``<name>.json`` as strict JSON (NaN and infinities become ``null``,
  :func:`strict`) and ``<name>.md``: the table, the claims, the machine line.

Shared pieces the experiments build on: :func:`train_models` (train or reuse the models
a table needs), :func:`equal_nfe` (the one equal-cost budget of ``reverse_equal``),
:func:`make_sampler` / :func:`row_label` (sampler rows of configs, read through the
registry: :func:`compdiff.samplers.registry.from_fields`), :func:`log_density_reason`
(why a cell is n/a) and :func:`save_figure`.

Experiments are found by name: ``get("table2d")`` imports
``compdiff.experiments.table2d``; any other name is imported as a module path
(``"my_pkg.my_table"``), so an experiment outside the package is one module plus one
config too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import pkgutil
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from compdiff import plots, samplers, schedules, train
from compdiff import workdir as workdir_lib
from compdiff.compose import Density
from compdiff.evaluation import diagnostics
from compdiff.samplers import registry
from compdiff.schedules import Schedule

Array = jax.Array
EQUAL = "reverse_equal"  # reverse diffusion at the NFE of the costliest MCMC row


# --- the registry -----------------------------------------------------------------------------
def names() -> list[str]:
    """The experiments of this package."""
    here = os.path.dirname(__file__)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if m.name not in ("common",
                                                                                  "paired"))


def get(name: str) -> ModuleType:
    """The experiment module ``name``: one of :func:`names`, else any importable module
    (``my_pkg.my_table``), so an experiment outside the package needs no registration."""
    path = f"compdiff.experiments.{name}" if name in names() else name
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name != path:
            raise
        raise ValueError(f"unknown experiment {name!r}; known: {names()} (or the path of "
                         "an importable module)") from None
    for attr in ("run", "markdown"):
        if not callable(getattr(module, attr, None)):
            raise ValueError(f"experiment module {path} defines no {attr}()")
    return module


# --- the protocol -----------------------------------------------------------------------------
def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs ``config.experiment`` in ``workdir`` under the protocol; returns the JSON's content.

    Raises :class:`~compdiff.workdir.WorkdirInUse` at once if another process holds
    ``workdir``.
    """
    name = config.get("experiment")
    if not name:
        raise ValueError("the config names no experiment (config.experiment)")
    experiment = get(name)
    stem = name.rpartition(".")[2]
    with workdir_lib.lock(workdir):
        start = time.time()
        out = experiment.run(config, workdir)
        result = dict(out) if isinstance(out, Mapping) else {"rows": list(out)}
        result.setdefault("claims", [])
        result.update(experiment=stem, variant=config.get("variant", ""),
                      config=json.loads(config.to_json_best_effort()), machine=machine())
        if hasattr(experiment, "claims"):
            result["claims"] = list(result["claims"]) + list(experiment.claims(result))
        result["wall_seconds"] = time.time() - start
        result = strict(result)
        write_json(os.path.join(workdir, f"{stem}.json"), result)
        with open(os.path.join(workdir, f"{stem}.md"), "w") as f:
            f.write(markdown(experiment, result))
        logging.info("%s done in %.1fs: %s", stem, result["wall_seconds"], workdir)
        return result


def markdown(experiment: ModuleType, result: dict) -> str:
    """The experiment's table, then its claims, then the machine and wall time."""
    lines = [experiment.markdown(result).rstrip("\n"), ""]
    lines += [c["text"] for c in result.get("claims", []) if c.get("text")]
    train_s = result.get("train_seconds")
    extra = ""
    if isinstance(train_s, Mapping) and train_s:
        extra = f" (training {_total(train_s):.0f}s)"
    lines.append(f"\nMachine: {result['machine']}. Wall time {result['wall_seconds']:.0f}s"
                 f"{extra}.")
    return "\n".join(lines) + "\n"


def _total(seconds: Mapping) -> float:
    return sum(_total(v) if isinstance(v, Mapping) else float(v) for v in seconds.values())


def machine() -> str:
    """The machine a result was measured on, for the JSON and the README."""
    return (f"{cpu_name()}; {os.cpu_count()} CPUs visible; {platform.platform()}; "
            f"python {platform.python_version()}; jax {jax.__version__}; "
            f"devices {[str(d) for d in jax.devices()]}")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what ``platform`` knows."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def strict(value: Any) -> Any:
    """``value`` as strict JSON data: NaN and infinities become None, numpy scalars and
    arrays plain numbers and lists, tuples lists."""
    if isinstance(value, Mapping):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, result: dict) -> None:
    """Writes ``result`` (see :func:`strict`) to ``path``; never writes NaN."""
    with open(path, "w") as f:
        json.dump(strict(result), f, indent=1, allow_nan=False)


def report(result: dict, text: str, out: str | None) -> None:
    """A measurement script's ending: prints the Markdown ``text``; with ``out``, writes
    ``result`` there as strict JSON and ``text`` beside it (``.md``)."""
    print(text, end="")
    if out:
        write_json(out, result)
        with open(os.path.splitext(out)[0] + ".md", "w") as f:
            f.write(text)


def save_figure(fig: Any, path: str) -> None:
    """Saves a matplotlib figure (creating its directory) and closes it."""
    plt = plots.pyplot()

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # JAX's own compile event


@contextlib.contextmanager
def compile_seconds(fun_name: str | None = "jit(_run)") -> Iterator[list[float]]:
    """The seconds of each XLA compile of ``fun_name`` (``None``: of any function) while the
    block runs, from JAX's compile events (``jax.monitoring``). The default is the annealed
    sampler's jitted run, so a table can say how much of its sampling time was compiling."""
    seconds: list[float] = []

    def listen(event: str, duration: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE and fun_name in (None, kwargs.get("fun_name")):
            seconds.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seconds
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


# --- models -----------------------------------------------------------------------------------
def train_models(jobs: Mapping[str, ml_collections.ConfigDict], workdir: str
                 ) -> dict[str, float]:
    """Trains (or reuses: a finished run resumes as a no-op) each ``jobs[path]`` config in
    ``workdir/path``; seconds per path. Each training locks its own directory."""
    seconds = {}
    for i, (path, config) in enumerate(jobs.items()):
        start = time.time()
        logging.info("[model %d/%d] training (or reusing) %s", i + 1, len(jobs), path)
        train.train(config, os.path.join(workdir, path))
        seconds[path] = time.time() - start
    return seconds


# --- one 2D cell ------------------------------------------------------------------------------
def run_cell(density_fn: Callable[[], Any], sampler: samplers.Sampler, spec: Mapping,
             schedule: Schedule, key: Array, num: int, extent: float
             ) -> tuple[dict, np.ndarray | None, Density | None]:
    """Samples one cell of a 2D table at level 1. ``density_fn()`` builds the composition
    (it may refuse); a row with ``target_accept > 0`` first tunes the step size to it.

    Returns ``(row fields, samples, composition)``; an impossible cell (the
    library refuses the composition, or it is improper beyond the evaluation
    window ``[-extent, extent]^2``) gives ``status: n/a`` with the library's
    message and no samples.
    """
    t0 = time.time()
    try:
        density = built = density_fn()
        if sampler.name == "reverse_equal":  # the levels it samples, as the other cells see them
            density, _ = samplers.last_levels(built, schedule, sampler.budget)
        # Only a log-density has a normalizer to lack; reverse diffusion of a
        # score-only composition never needs one.
        improper = density.has_log_prob and diagnostics.improper_reason(density, 1,
                                                                         extent=extent)
        if improper:
            raise ValueError(improper)
        if spec.get("target_accept", 0.0) > 0:
            sampler = samplers.tune_step(density, sampler, schedule, jax.random.fold_in(key, 1),
                                         spec["target_accept"])
        tuned = time.time() - t0
        t0 = time.time()
        x, stats = samplers.sample(built, sampler, schedule, key, num, denoise=False)
        x = np.asarray(jax.block_until_ready(x))
    except ValueError as e:
        return {"status": "n/a", "reason": str(e)}, None, None
    health = stats.summary()
    return {"status": "ok", "accept": health["accept_mean"],
            "accept_level1": health["accept_level1"], "diverged": stats.diverged,
            "nfe": stats.nfe, "seconds": time.time() - t0, "tune_seconds": tuned,
            "step": sampler.step.a}, x, density


# --- samplers ---------------------------------------------------------------------------------
def _fields(row: Mapping) -> tuple[str, dict]:
    spec = dict(row["sampler"].items())
    return spec.pop("name"), spec


def make_sampler(row: Mapping, budget: int = 0, **overrides: Any) -> samplers.Sampler:
    """The sampler of a config row (``configs/common.py``'s ``sampler_row``): its
    ``sampler`` fields through the registry; a ``reverse_equal`` row gets ``budget``."""
    name, fields = _fields(row)
    if name == EQUAL and not fields.get("budget"):
        fields["budget"] = budget
    return registry.from_fields(name, fields, **overrides)


def row_label(row: Mapping) -> str:
    """The row's ``label`` if it sets one, else the registry's label of its sampler."""
    if row.get("label"):
        return row["label"]
    name, fields = _fields(row)
    return registry.label(registry.from_fields(name, fields, **(
        {"budget": 1} if name == EQUAL and not fields.get("budget") else {})))


def log_density_reason(sampler: samplers.Sampler, has_log_prob: bool, model: str) -> str | None:
    """Why ``sampler`` cannot run on a model without a log-density (None when it can)."""
    if has_log_prob or not sampler.spec.needs_log_prob:
        return None
    return f"{sampler.name} needs a log-density; the {model} model is score-only"


@dataclasses.dataclass(frozen=True)
class EqualNFE:
    """``reverse_equal``'s budget: ``nfe`` levels ``levels..offset+1`` of a ``levels``-level
    schedule, ending at the noise of level 1 of the table's own schedule."""

    nfe: int
    levels: int
    offset: int


def equal_nfe(rows: Iterable[Mapping], schedule: str, num_levels: int) -> EqualNFE | None:
    """The equal-cost budget of a table: the NFE per chain of its costliest MCMC row (one
    with kernel steps) on ``num_levels`` levels of ``schedule``, and the longer schedule
    that spends it (:func:`compdiff.samplers.equal_cost_levels`). None without MCMC rows."""
    costs = [s.nfe(num_levels) for s in (make_sampler(r) for r in rows
                                         if _fields(r)[0] != EQUAL)
             if s.num_kernel_steps > 0]
    if not costs:
        return None
    sigma_1 = float(schedules.get(schedule, num_levels).sigma[1])
    levels, offset = samplers.equal_cost_levels(schedule, sigma_1, max(costs))
    return EqualNFE(nfe=max(costs), levels=levels, offset=offset)


def uses_equal(rows: Iterable[Mapping]) -> bool:
    """Whether any row is ``reverse_equal``."""
    return any(_fields(r)[0] == EQUAL for r in rows)
