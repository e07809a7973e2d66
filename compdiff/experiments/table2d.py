"""RRR's 2D composition table: train components, compose, sample at equal cost, evaluate.

For every composition (``configs/experiments/table2d.py``), model kind and sampler:

1. the component models are trained (or reused: :func:`compdiff.train.train`
   resumes a finished run as a no-op) under ``DIR/models/<dataset>_<param>``;
2. the composition is built from oracles, ``eps`` models or energy models;
3. a sampler draws ``num_samples`` at level 1 (:func:`compdiff.experiments.common.run_cell`),
   and the samples are scored by
   :mod:`compdiff.evaluation.metrics` against the exact target, level 1 of the same
   composition of *oracles* normalized on a grid (:func:`compdiff.exact.on_grid`).

Equal cost. A run of an annealed sampler costs ``sampler.nfe(T)`` gradient
evaluations per chain. ``reverse_equal`` is reverse diffusion with as many:
models (or oracles) built on a ``T'``-level schedule, stopped at the level
``offset + 1`` whose ``sigma`` is closest to ``sigma_1`` of the ``T``-level
schedule, so its samples and the target share a noise level, with
``T' - offset`` equal to the largest MCMC budget in the table: the
``reverse_equal`` sampler (:mod:`compdiff.samplers.equal_cost`).

Paired: every sampler and model kind of a composition samples from one key, so
sample ``i`` of every cell starts from the same initial noise. The claims compare
the best Metropolis-adjusted row with reverse diffusion at equal NFE (``reverse_equal``,
else ``reverse``) by the exact level-1 log-density of each sample pair (paired
bootstrap, :mod:`compdiff.experiments.paired`).

Impossible cells (a mixture of score-only models; a Metropolis-adjusted
sampler on a score-only composition) are rows with ``"status": "n/a"`` and
the library's own error message as ``"reason"``.

Outputs under ``DIR`` (the protocol, :mod:`compdiff.experiments.common`, writes the
first two): ``table2d.json``, ``table2d.md``,
``samples/<composition>_<model>_<sampler>.npz`` (key ``x``) and
``figures/<composition>.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from compdiff import compose, exact, plots, samplers, schedules, sculpt
from compdiff.compose import Density
from compdiff.data import toy2d
from compdiff.evaluation import diagnostics, metrics
from compdiff.experiments import common, paired
from compdiff.models import is_energy, loading
from compdiff.schedules import Schedule

Array = jnp.ndarray
METRIC_KEYS = ("ll", "ll_exact", "mode_tv", "mmd", "var", "accept", "accept_level1", "diverged",
               "nfe", "seconds")


# --- models -----------------------------------------------------------------------------------
def model_workdir(root: str, dataset: str, param: str, num_levels: int, base_levels: int) -> str:
    suffix = "" if num_levels == base_levels else f"_T{num_levels}"
    return os.path.join(root, "models", f"{dataset}_{param}{suffix}")


def train_config(config: ml_collections.ConfigDict, dataset: str, param: str,
                 num_levels: int) -> ml_collections.ConfigDict:
    """``config.train`` (a ``configs/models/toy2d.py`` config) for one component model."""
    c = copy.deepcopy(config.train)
    c.data.dataset = dataset
    c.model.parameterization = param
    c.schedule.name = config.schedule.name
    c.schedule.num_levels = num_levels
    return c


def _parameterization(config: ml_collections.ConfigDict, kind: str) -> str | None:
    if kind == "oracle":
        return None
    if kind == "eps":
        return "eps"
    if kind == "energy":
        return config.energy_param
    raise ValueError(f"unknown model kind {kind!r}; known: oracle, eps, energy")


def _model_kinds(config: ml_collections.ConfigDict, comp: ml_collections.ConfigDict) -> list[str]:
    return [k for k in config.models if not comp.models or k in comp.models]


def _rows(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    return [config.samplers[s] for s in config.sampler_names]


class _Untrained(Density):
    """Stands in for a component model that is not trained (yet).

    Composition constructors check only structure (dimension, whether each
    leaf has a log-density), so a composition the library refuses, such as a
    mixture of score-only models, is refused with its own message before any
    model is trained for it.
    """

    def __init__(self, dataset: str, param: str, dim: int = 2):
        self.dim, self.has_log_prob, self.name = dim, is_energy(param), f"{dataset}/{param}"

    def describe(self) -> str:
        return self.name

    def score(self, x: Array, t: Array) -> Array:
        raise RuntimeError(f"model {self.name} was never trained")


def needed_models(config: ml_collections.ConfigDict, equal_levels: int | None
                  ) -> list[tuple[str, str, int]]:
    """Every ``(dataset, parameterization, T)`` of a composition the library accepts."""
    levels = [config.schedule.num_levels] + ([equal_levels] if equal_levels else [])
    needed = []
    for name in config.composition_names:
        comp = config.compositions[name]
        for kind in _model_kinds(config, comp):
            param = _parameterization(config, kind)
            if param is None:
                continue
            try:
                combine(comp.op, [_Untrained(d, param) for d in comp.components], comp.alpha)
            except ValueError:
                continue  # an n/a cell: its row carries the reason
            needed += [(d, param, t) for d in comp.components for t in levels]
    return list(dict.fromkeys(needed))


def load_models(config: ml_collections.ConfigDict, workdir: str, equal_levels: int | None
                ) -> tuple[dict[tuple[str, str, int], Density], dict[str, float]]:
    """Trains (or reuses) every needed component model and loads it; seconds per model."""
    needed = needed_models(config, equal_levels)
    paths = {key: os.path.relpath(model_workdir(workdir, *key, config.schedule.num_levels),
                                  workdir) for key in needed}
    seconds = common.train_models({paths[k]: train_config(config, *k) for k in needed}, workdir)
    return {k: loading.load_model(os.path.join(workdir, paths[k])) for k in needed}, seconds


# --- compositions and samplers ----------------------------------------------------------------
def combine(op: str, leaves: list[Density], alpha: float = 0.5) -> Density:
    """``product`` / ``mixture`` (equal weights) / ``negation`` ``leaves[0] / leaves[1]**alpha``
    / ``contrast`` ``p1^2 / (alpha p1 + (1 - alpha) p2)`` (Compositional Sculpting's negation,
    :mod:`compdiff.sculpt`, on level-``t`` log-densities)."""
    if op == "product":
        return compose.product(leaves)
    if op == "mixture":
        return compose.mixture(leaves)
    if op == "negation":
        if len(leaves) != 2:
            raise ValueError(f"negation needs 2 components, got {len(leaves)}")
        return compose.negation(leaves[0], leaves[1], alpha)
    if op == "contrast":
        return sculpt.algebraic(leaves, sculpt.contrast(alpha))
    raise ValueError(f"unknown composition op {op!r}; known: product, mixture, negation, "
                     "contrast")


def build(comp: ml_collections.ConfigDict, param: str | None, schedule: Schedule,
          models: dict) -> Density:
    """The composition ``comp`` over oracles (``param is None``) or trained models."""
    if param is None:
        leaves = [toy2d.get(d, schedule) for d in comp.components]
    else:
        leaves = [models.get((d, param, schedule.num_levels)) or _Untrained(d, param)
                  for d in comp.components]
    density = combine(comp.op, leaves, comp.alpha)  # refuses impossible compositions
    untrained = [leaf.describe() for leaf in leaves if isinstance(leaf, _Untrained)]
    if untrained:
        raise RuntimeError(f"composition {comp.components} needs untrained models {untrained}")
    return density


# --- the table --------------------------------------------------------------------------------
def _equal_nfe(config: ml_collections.ConfigDict) -> common.EqualNFE | None:
    """``reverse_equal``'s budget: the largest MCMC budget in the table (None: no such row)."""
    if not common.uses_equal(_rows(config)):
        return None
    equal = common.equal_nfe(_rows(config), config.schedule.name, config.schedule.num_levels)
    if equal is None:
        raise ValueError("reverse_equal matches the MCMC samplers' cost, but none is configured")
    return equal


def _figure_density(density: Density, config: ml_collections.ConfigDict):
    if not density.has_log_prob:
        return None
    return exact.on_grid(density, 1, extent=config.figure.extent, size=config.figure.grid_size)


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every cell of one table run shares."""

    config: ml_collections.ConfigDict
    workdir: str
    base: Schedule
    models: dict
    equal: common.EqualNFE | None

    def cell_density(self, comp, param: str | None, sampler: samplers.Sampler
                     ) -> tuple[Callable[[], Density], Schedule]:
        """A builder of the cell's composition (it may refuse) and the schedule to sample on."""
        if sampler.name != common.EQUAL:
            return lambda: build(comp, param, self.base, self.models), self.base
        longer = schedules.get(self.config.schedule.name, self.equal.levels)
        return lambda: build(comp, param, longer, self.models), longer


def _model_target(density: Density, config: ml_collections.ConfigDict, key: Array
                  ) -> tuple[exact.GridTarget, np.ndarray]:
    """The cell's own composition of trained models, grid-normalized at level 1, and samples.

    Scoring against it isolates sampler error: the exact target scores the
    models and the sampler together.
    """
    target = exact.on_grid(density, 1, extent=config.grid.extent, size=config.grid.model_size)
    return target, np.asarray(target.sample(jax.random.fold_in(key, 2**20), config.num_samples))


NEGATIONS = ("negation", "contrast")


def support_masks(comp, schedule: Schedule, config: ml_collections.ConfigDict
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Level-1 supports of a negation's two components on the exact target's grid:
    cells where the component's density is at least ``metrics.MODE_LEVEL`` of its peak."""
    masks = []
    for name in comp.components[:2]:
        grid = exact.on_grid(toy2d.get(name, schedule), 1, extent=config.grid.extent,
                             size=config.grid.size)
        log_mass = np.asarray(grid.log_mass, np.float64)
        masks.append(log_mass >= log_mass.max() + np.log(metrics.MODE_LEVEL))
    return masks[0], masks[1]


def set_accuracy(x: np.ndarray, target: exact.GridTarget, p1: np.ndarray, p2: np.ndarray
                 ) -> float:
    """Fraction of samples in ``p1``'s support and outside ``p2``'s (:func:`support_masks`);
    samples outside the grid or not finite count as misses."""
    x = np.asarray(x, np.float64)
    n = p1.shape[0]
    cell = np.floor((x - np.asarray(target.lows)) / np.asarray(target.cell))
    inside = np.all(np.isfinite(cell) & (cell >= 0) & (cell < n), axis=-1)
    ij = np.where(inside[:, None], cell, 0).astype(int)
    hit = p1[ij[:, 0], ij[:, 1]] & ~p2[ij[:, 0], ij[:, 1]]
    return float(np.mean(inside & hit))


def _model_metrics(x: np.ndarray, target: exact.GridTarget, reference: np.ndarray) -> dict:
    return {"ll_model": metrics.ll(x, target), "ll_model_exact": metrics.ll(reference, target),
            "mmd_model": metrics.mmd(x, reference)}


LOG_DENSITY_FLOOR = -70.0  # ~log(1e-30): a sample the target gives no mass, for the pairs


def sample_log_density(x: np.ndarray, target: exact.GridTarget) -> np.ndarray:
    """The exact normalized log-density of each sample, non-finite ones at
    :data:`LOG_DENSITY_FLOOR` (the paired claims need a finite outcome per sample)."""
    log_p = np.asarray(target.log_prob(np.asarray(x, np.float32)), np.float64)
    return np.where(np.isfinite(log_p), np.maximum(log_p, LOG_DENSITY_FLOOR), LOG_DENSITY_FLOOR)


def composition_claims(name: str, rows: list[dict], outcomes: dict) -> list[dict]:
    """Per model kind: the best Metropolis-adjusted row (by LL) beats reverse diffusion at
    equal NFE (``reverse_equal``, else ``reverse``) on paired per-sample log-densities."""
    claims = []
    for kind in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == kind and (kind, r["sampler"]) in outcomes]
        adjusted = [r for r in ok if samplers.registry.needs_log_prob(r["kernel"])
                    and r.get("ll") is not None]
        base = ([r for r in ok if r["kernel"] == common.EQUAL]
                or [r for r in ok if r["kernel"] == "reverse"])
        if not adjusted or not base:
            continue
        best = max(adjusted, key=lambda r: r["ll"])
        claims.append(paired.compare(
            f"{name} ({kind}): {best['sampler']} beats {base[0]['sampler']} in exact "
            "log-density", best["sampler"], outcomes[kind, best["sampler"]],
            base[0]["sampler"], outcomes[kind, base[0]["sampler"]], binary=False))
    return claims


def _run_composition(ctx: _Context, ci: int, name: str) -> tuple[list[dict], list[dict]]:
    config, comp = ctx.config, ctx.config.compositions[name]
    t0 = time.time()
    target = exact.on_grid(build(comp, None, ctx.base, ctx.models), 1,
                           extent=config.grid.extent, size=config.grid.size)
    comp_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), ci)
    reference = np.asarray(target.sample(jax.random.fold_in(comp_key, 0), config.num_samples))
    ll_exact = metrics.ll(reference, target)
    supports = support_masks(comp, ctx.base, config) if comp.op in NEGATIONS else None
    logging.info("== %s: exact target ready in %.1fs, ll_exact %.3f", name, time.time() - t0,
                 ll_exact)
    rows, figure_rows, model_targets, outcomes = [], [], {}, {}
    cell_key = jax.random.fold_in(comp_key, 1)  # one key for every cell: paired samples
    for kind in _model_kinds(config, comp):
        param = _parameterization(config, kind)
        panels = _component_panels(comp, param, ctx.base, ctx.models, config)
        for spec in _rows(config):
            sampler = common.make_sampler(spec, ctx.equal.nfe if ctx.equal else 0)
            sname = common.row_label(spec)
            density_fn, schedule = ctx.cell_density(comp, param, sampler)
            fields, x, density = common.run_cell(density_fn, sampler, spec, schedule, cell_key,
                                          config.num_samples, config.grid.extent)
            row = {"composition": name, "model": kind, "parameterization": param or "oracle",
                   "sampler": sname, "kernel": sampler.name, "table": bool(comp.table),
                   **fields}
            if x is None:
                panels.append((f"{sname}: n/a", None))
                logging.info("%s | %s | %s: n/a (%s)", name, kind, sname, row["reason"])
            else:
                np.savez(os.path.join(ctx.workdir, "samples", f"{name}_{kind}_{sname}.npz"), x=x)
                row.update(metrics.evaluate(x, target, reference, comp.gmm_components,
                                            config.seed), ll_exact=ll_exact)
                outcomes[kind, sname] = sample_log_density(x, target)
                if supports is not None:
                    row.update(set_accuracy=set_accuracy(x, target, *supports),
                               set_accuracy_exact=set_accuracy(reference, target, *supports))
                if param is not None and density.has_log_prob:
                    cache = (kind, sampler.name == common.EQUAL)
                    if cache not in model_targets:
                        model_targets[cache] = _model_target(density, config, comp_key)
                    row.update(_model_metrics(x, *model_targets[cache]))
                panels.append((sname, x))
                logging.info("%s | %s | %s: ll %.3f (exact %.3f) mode TV %s mmd %.2e var %.2e "
                             "accept %s (level 1: %s) nfe %d %.1fs", name, kind, sname, row["ll"],
                             ll_exact, _fmt(row["mode_tv"], ".3f"), row["mmd"], row["var"],
                             _fmt(row["accept"], ".2f"), _fmt(row["accept_level1"], ".2f"),
                             row["nfe"], row["seconds"])
            rows.append(common.strict(row))
        figure_rows.append((kind if param is None else f"{kind} ({param})", panels))
    plots.figure(os.path.join(ctx.workdir, "figures", f"{name}.png"), figure_rows,
                 extent=config.figure.extent)
    claims = composition_claims(name, rows, outcomes) if comp.table else []
    return rows, claims


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Builds the whole table in ``workdir``: rows, the equal-NFE budget and the claims
    (:func:`compdiff.experiments.common.run` writes them)."""
    for sub in ("samples", "figures"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    base = schedules.get(config.schedule.name, config.schedule.num_levels)
    equal = _equal_nfe(config)
    if equal:
        logging.info("reverse_equal: NFE %d = levels %d..%d of a T'=%d schedule", equal.nfe,
                     equal.levels, equal.offset + 1, equal.levels)
    models, seconds = load_models(config, workdir, equal.levels if equal else None)
    ctx = _Context(config=config, workdir=workdir, base=base, models=models, equal=equal)
    rows, claims = [], []
    for ci, name in enumerate(config.composition_names):
        cell_rows, cell_claims = _run_composition(ctx, ci, name)
        rows += cell_rows
        claims += cell_claims
    return {"rows": rows, "claims": claims, "train_seconds": seconds,
            "equal_nfe": None if equal is None else dataclasses.asdict(equal)}


def _component_panels(comp, param: str | None, base: Schedule, models: dict,
                      config: ml_collections.ConfigDict) -> list:
    """Level-1 densities of the components and of their composition, as this kind models them."""
    if param == "eps":
        return [(f"{d} (score-only)", None) for d in comp.components] + [("composed", None)]
    if param is None:
        leaves = [toy2d.get(d, base) for d in comp.components]
    else:
        leaves = [models[d, param, base.num_levels] for d in comp.components]
    panels = [(d, _figure_density(leaf, config)) for d, leaf in zip(comp.components, leaves)]
    composed = combine(comp.op, leaves, comp.alpha)
    title = "exact" if param is None else "composed"
    if composed.has_log_prob and diagnostics.improper_reason(composed, 1,
                                                             extent=config.grid.extent):
        title += " (improper: window only)"
    return panels + [(title, _figure_density(composed, config))]


# --- Markdown ---------------------------------------------------------------------------------
def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "fail"
    return format(value, spec)


def markdown(result: dict) -> str:
    """The table as Markdown; n/a cells point to numbered footnotes with their reasons."""
    lines = ["| composition | model | sampler | LL | LL exact | mode TV | MMD^2 | Var "
             "| LL model (exact) | MMD^2 model | in p1 not p2 (exact) | accept (level 1) "
             "| diverged | NFE | s |",
             "|---" * 15 + "|"]
    reasons: list[str] = []
    for r in (r for r in result["rows"] if r.get("table", True)):
        head = f"| {r['composition']} | {r['parameterization']} | {r['sampler']} |"
        if r["status"] != "ok":
            if r["reason"] not in reasons:
                reasons.append(r["reason"])
            lines.append(f"{head} n/a [{reasons.index(r['reason']) + 1}] | | | | | | | | | | | |")
            continue
        # A non-finite metric was stored as null; "fail" says so in the table.
        ll, mmd, var = (("fail" if r.get(k) is None else _fmt(r[k], s))
                        for k, s in (("ll", ".3f"), ("mmd", ".2e"), ("var", ".2e")))
        model = "-"
        if "ll_model" in r:
            model = f"{_fmt(r['ll_model'])} ({_fmt(r['ll_model_exact'])})"
        accept = "-"
        if r["accept"] is not None:
            accept = f"{_fmt(r['accept'], '.2f')} ({_fmt(r.get('accept_level1'), '.2f')})"
        acc = "-"
        if r.get("set_accuracy") is not None:
            acc = f"{_fmt(r['set_accuracy'], '.2f')} ({_fmt(r['set_accuracy_exact'], '.2f')})"
        lines.append(f"{head} {ll} | {_fmt(r['ll_exact'])} | {_fmt(r.get('mode_tv'))} | {mmd} | "
                     f"{var} | {model} | {_fmt(r.get('mmd_model'), '.2e')} | {acc} | {accept} | "
                     f"{r.get('diverged', '-')} | {r['nfe']} | {r['seconds']:.1f} |")
    lines.append("")
    lines += [f"[{i + 1}] {reason}" for i, reason in enumerate(reasons)]
    eq = result.get("equal_nfe")
    if eq:
        lines.append(f"\nreverse_equal: reverse diffusion on a T'={eq['levels']} schedule from "
                     f"level {eq['levels']} down to level {eq['offset'] + 1} "
                     f"(sigma matched to level 1 of the table's schedule), NFE {eq['nfe']}.")
    return "\n".join(lines) + "\n"
