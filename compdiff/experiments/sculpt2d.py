"""Compositional Sculpting on 2D oracles: guided and algebraic routes against exact targets.

For every operator of ``configs/experiments/sculpt2d.py`` (a pair of base datasets and a
:mod:`compdiff.sculpt` operator), realization and sampler:

1. the exact target: the operator applied to the bases' level-0 densities and
   diffused to level 1 (:func:`compdiff.sculpt.diffused_target`), tabulated on
   a grid; exact reference samples come from it;
2. the realization is built over the oracle bases: ``guided_exact`` (the
   quadrature classifier), ``guided_learned`` (a classifier trained by
   :mod:`compdiff.train`'s ``sculpt_classifier`` task under
   ``DIR/classifiers/<bases>``, reused when present) or ``algebraic``;
3. a sampler draws ``num_samples`` at level 1 (as the 2D table does,
   :func:`compdiff.experiments.common.run_cell`; every realization and sampler of an
   operator from one key, so their samples are paired), scored by
   :mod:`compdiff.evaluation.metrics`:

   - ``ll`` (exact normalized log-density of the samples) and ``ll_exact``
     (of exact samples), ``mmd`` (unbiased MMD^2 to the exact samples) and
     ``mmd_floor`` (of a second exact sample set: the estimator's noise);
   - ``tv``: total variation between the samples' and the target's masses on
     ``tv_bins^2`` cells over the grid window (samples outside it in an extra
     cell of target mass 0), and ``tv_floor`` for exact samples (finite-sample
     TV is biased upwards, so compare with the floor);
   - algebraic rows also ``mmd_own``: against the algebraic route's own
     level-1 target (the operator on level-1 densities), which separates the
     sampler's error from the route's (at ``t > 0`` the two targets differ).

Outputs under ``DIR``: ``sculpt2d.json``, ``sculpt2d.md`` (the protocol,
:mod:`compdiff.experiments.common`), ``samples/<operator>_<realization>_<sampler>.npz`` and
``figures/sculpt2d_<operator>.png``. (The GFlowNet half is its own experiment,
:mod:`compdiff.experiments.gflownet`.)
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from compdiff import exact, plots, schedules, sculpt
from compdiff.data import toy2d
from compdiff.evaluation import metrics
from compdiff.experiments import common
from compdiff.schedules import Schedule

REALIZATIONS = ("guided_exact", "guided_learned", "algebraic")


def tv(x: np.ndarray, target: exact.GridTarget, bins: int) -> float:
    """Total variation between binned samples and the target's mass on ``bins^2`` cells."""
    mass = np.exp(np.asarray(target.log_mass, np.float64))
    n = mass.shape[0]
    if n % bins:
        raise ValueError(f"tv_bins {bins} must divide the target grid size {n}")
    f = n // bins
    coarse = mass.reshape(bins, f, bins, f).sum(axis=(1, 3)).ravel()
    x = np.asarray(x, np.float64)
    cell = np.floor((x - np.asarray(target.lows)) / (np.asarray(target.cell) * f))
    inside = np.all(np.isfinite(cell) & (cell >= 0) & (cell < bins), axis=-1)
    ij = np.where(inside[:, None], cell, 0).astype(int)
    idx = np.where(inside, ij[:, 0] * bins + ij[:, 1], bins * bins)
    freq = np.bincount(idx, minlength=bins * bins + 1) / len(x)
    return float(0.5 * np.abs(freq - np.append(coarse / coarse.sum(), 0.0)).sum())


def _operator(spec: ml_collections.ConfigDict) -> sculpt.Operator:
    return sculpt.get(spec.op, spec.alpha)


def _learned(config: ml_collections.ConfigDict, workdir: str, bases: tuple[str, ...],
             cache: dict) -> sculpt.LearnedClassifier:
    """Trains (or reuses) the classifier of the base pair and loads it."""
    if bases not in cache:
        c = copy.deepcopy(config.classifier)
        c.data.bases = list(bases)
        c.data.dataset = "+".join(bases)
        c.schedule.num_levels = config.schedule.num_levels
        path = os.path.join("classifiers", "_".join(bases))
        seconds = common.train_models({path: c}, workdir)
        cache[bases] = sculpt.load_classifier(os.path.join(workdir, path))
        logging.info("classifier %s ready in %.1fs (%s)", bases, seconds[path], path)
    return cache[bases]


def _builder(realization: str, op: sculpt.Operator, bases: list, schedule: Schedule,
             config: ml_collections.ConfigDict, learned):
    """A function building the realization (it may refuse with a ValueError)."""
    g = config.grid
    if realization == "algebraic":
        return lambda: sculpt.algebraic(bases, op)
    if realization == "guided_exact":
        return lambda: sculpt.guided(bases, sculpt.exact_classifier(
            bases, op, schedule, extent=g.extent0, size=g.size0), op)
    if realization == "guided_learned":
        def build():
            clf = learned()
            uniform = tuple((1 / op.num_models,) * op.num_models)
            if any(not np.allclose(b, uniform) for b in op.obs_weights):
                raise ValueError(f"the learned classifier is trained for uniform observation "
                                 f"weights; {op.name} has {op.obs_weights}")
            return sculpt.guided(bases, clf, op)
        return build
    raise ValueError(f"unknown realization {realization!r}; known: {list(REALIZATIONS)}")


def _samplers_for(config: ml_collections.ConfigDict, realization: str) -> list[str]:
    if realization == "algebraic":
        return list(config.sampler_names)
    return list(config.guided_samplers[realization])


def _run_operator(config: ml_collections.ConfigDict, workdir: str, schedule: Schedule, oi: int,
                  name: str, classifiers: dict) -> list[dict]:
    spec, g = config.operators[name], config.grid
    op = _operator(spec)
    bases = [toy2d.get(b, schedule) for b in spec.bases]
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), oi)
    t0 = time.time()
    target = sculpt.diffused_target(bases, op, schedule, 1, extent=g.extent, size=g.size,
                                    extent0=g.extent0, size0=g.size0)
    reference = np.asarray(target.sample(jax.random.fold_in(key, 0), config.num_samples))
    second = np.asarray(target.sample(jax.random.fold_in(key, 1), config.num_samples))
    ll_exact = metrics.ll(reference, target)
    floors = {"ll_exact": ll_exact, "mmd_floor": metrics.mmd(second, reference),
              "tv_floor": tv(second, target, config.tv_bins)}
    own = exact.on_grid(sculpt.algebraic(bases, op), 1, extent=g.extent, size=g.size)
    own_reference = np.asarray(own.sample(jax.random.fold_in(key, 2), config.num_samples))
    logging.info("== %s %s%s: exact target in %.1fs, ll_exact %.3f, mmd_floor %.1e, "
                 "tv_floor %.3f", name, op.name, tuple(spec.bases), time.time() - t0, ll_exact,
                 floors["mmd_floor"], floors["tv_floor"])
    rows, figure_rows = [], []
    cell_key = jax.random.fold_in(key, 3)  # one key for every cell: paired samples
    for realization in spec.realizations or config.realizations:
        panels = [("exact (level 1)", target)]
        learned = lambda: _learned(config, workdir, tuple(spec.bases), classifiers)  # noqa: E731
        density_fn = _builder(realization, op, bases, schedule, config, learned)
        for key_name in _samplers_for(config, realization):
            sspec = config.samplers[key_name]
            sampler, sname = common.make_sampler(sspec), common.row_label(sspec)
            fields, x, _ = common.run_cell(density_fn, sampler, sspec, schedule, cell_key,
                                           config.num_samples, g.extent)
            row = {"operator": name, "op": op.name, "bases": list(spec.bases),
                   "realization": realization, "sampler": sname, **fields, **floors}
            if x is None:
                logging.info("%s | %s | %s: n/a (%s)", name, realization, sname, row["reason"])
                panels.append((f"{sname}: n/a", None))
            else:
                np.savez(os.path.join(workdir, "samples", f"{name}_{realization}_{sname}.npz"),
                         x=x)
                row.update(ll=metrics.ll(x, target), mmd=metrics.mmd(x, reference),
                           tv=tv(x, target, config.tv_bins))
                if realization == "algebraic":
                    row["mmd_own"] = metrics.mmd(x, own_reference)
                logging.info("%s | %s | %s: ll %.3f (exact %.3f) mmd %.2e (floor %.1e) tv %.3f "
                             "(floor %.3f) nfe %d %.1fs", name, realization, sname, row["ll"],
                             ll_exact, row["mmd"], floors["mmd_floor"], row["tv"],
                             floors["tv_floor"], row["nfe"], row["seconds"])
                panels.append((sname, x))
            rows.append(common.strict(row))
        figure_rows.append((realization, panels))
    plots.figure(os.path.join(workdir, "figures", f"sculpt2d_{name}.png"), figure_rows,
                 extent=config.figure.extent)
    return rows


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Builds the table's rows in ``workdir`` (the protocol writes ``sculpt2d.json``)."""
    for sub in ("samples", "figures"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    schedule = schedules.get(config.schedule.name, config.schedule.num_levels)
    classifiers: dict = {}
    return [row for oi, name in enumerate(config.operator_names)
            for row in _run_operator(config, workdir, schedule, oi, name, classifiers)]


# --- Markdown ---------------------------------------------------------------------------------
def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def markdown(result: dict) -> str:
    """The table, then the best row (lowest MMD^2) of each route per operator."""
    lines = ["| operator | bases | realization | sampler | LL | LL exact | MMD^2 | MMD^2 floor "
             "| TV | TV floor | MMD^2 own | accept | NFE | s |", "|---" * 14 + "|"]
    reasons: list[str] = []
    for r in result["rows"]:
        head = (f"| {r['operator']} | {'/'.join(r['bases'])} | {r['realization']} | "
                f"{r['sampler']} |")
        if r["status"] != "ok":
            if r["reason"] not in reasons:
                reasons.append(r["reason"])
            lines.append(f"{head} n/a [{reasons.index(r['reason']) + 1}] |" + " |" * 9)
            continue
        ll = "fail" if r.get("ll") is None else _fmt(r["ll"])
        lines.append(f"{head} {ll} | {_fmt(r['ll_exact'])} | {_fmt(r.get('mmd'), '.2e')} | "
                     f"{_fmt(r['mmd_floor'], '.1e')} | {_fmt(r.get('tv'))} | "
                     f"{_fmt(r['tv_floor'])} | {_fmt(r.get('mmd_own'), '.2e')} | "
                     f"{_fmt(r.get('accept'), '.2f')} | {r['nfe']} | {r['seconds']:.1f} |")
    lines.append("")
    lines += [f"[{i + 1}] {reason}" for i, reason in enumerate(reasons)]
    lines += ["", "Best row of each route (lowest MMD^2) per operator:", ""]
    for name in dict.fromkeys(r["operator"] for r in result["rows"]):
        best = []
        for realization in REALIZATIONS:
            ok = [r for r in result["rows"] if r["operator"] == name and r["status"] == "ok"
                  and r["realization"] == realization and r.get("mmd") is not None]
            if ok:
                r = min(ok, key=lambda r: r["mmd"])
                best.append(f"{realization} {r['sampler']} {r['mmd']:.2e}")
        lines.append(f"- {name}: " + "; ".join(best))
    return "\n".join(lines) + "\n"
