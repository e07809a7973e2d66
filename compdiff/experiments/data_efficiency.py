"""Du & Kaelbling (2024) Figs. 3 and 4: composed factor models against one monolithic model.

Fig. 4, data efficiency. For a composition ``p ∝ p_1 p_2`` (product) or
``p = (p_1 + p_2) / 2`` (mixture) of two 2D oracles, and each size ``n`` and seed:

* factor models: model ``i`` is trained on ``n`` exact samples of ``p_i``; they are composed
  by the algebra (:mod:`compdiff.compose`, product or mixture of the trained models);
* the monolithic model is trained on ``2n`` exact samples of ``p`` itself
  (:func:`compdiff.factorized.sample`): the same total number of points.

Both are sampled to level 1 by the same sampler rows with the same key (sample ``i`` of
both starts from the same noise) and scored against the exact level-1 marginal of the data
distribution ``p`` (:func:`compdiff.factorized.exact_composition`: for a product this is the
diffusion of the level-0 product, not the product of diffused factors, which is what the
composed model targets; the ``oracle`` rows, the composition of the exact factors by the
same sampler, show that gap), normalized on a grid (:func:`compdiff.exact.on_grid`), with
:mod:`compdiff.evaluation.metrics`: unbiased ``MMD^2`` to exact samples (``mmd_floor``:
the same between two exact sample sets), mean exact log-density ``ll`` (``ll_exact`` for
exact samples) and mode-weight TV.

Fig. 3, generalization. The target is a 3 x 3 grid of Gaussians
``p(x, y) = p_x(x) p_y(y)``, each axis a 1D mixture at ``centers``. The data are two
slices of it: ``S_h = p`` restricted to ``|y| <= band`` and ``S_v = p`` restricted to
``|x| <= band`` (:func:`compdiff.factorized.restrict`, exact samples), ``n`` points each.
In ``p``, ``x`` is independent of ``y``, so the x-coordinates of ``S_h`` are exact samples of
``p_x`` and the y-coordinates of ``S_v`` of ``p_y``. The composed model is one 1D model per
axis (``x`` of ``S_h``, ``y`` of ``S_v``) multiplied over coordinates
(:func:`compdiff.factorized.coordinate_product`, which reverse diffusion samples
exactly); the monolithic model is one 2D model on ``S_h ∪ S_v``. The region
``H = {|x| > band, |y| > band}`` (the four corner modes) holds no training point; we report
each model's fraction of samples in ``H`` against the exact target's, and ``MMD^2``.

Claims (at ``n = claim_size``): per composition and sampler, "composed factors have lower
MMD^2 than the monolithic model" (a paired t interval and test over training seeds, which
also pair the sampling keys: :func:`seed_claim`) and "... higher exact log-density per
sample" (paired bootstrap over samples pooled over seeds, paired by common initial
noise); for Fig. 3, "the composed model puts more samples in H" (exact McNemar on pooled
paired samples, with the paired bootstrap interval) and "lower MMD^2" (paired t over seeds).

Outputs under ``DIR``: ``data/`` (the .npz training sets), ``models/``,
``figures/data_efficiency.png`` (error against ``n``), ``figures/generalization.png``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from scipy import stats

from compdiff import compose, exact, factorized, oracles, plots, schedules
from compdiff.data import toy2d
from compdiff.evaluation import metrics
from compdiff.experiments import common, paired
from compdiff.models import loading

KINDS = ("composed", "monolithic")
LOG_DENSITY_FLOOR = -70.0  # a sample the target gives no mass, for the paired outcomes


# --- configuration ----------------------------------------------------------------------------
def check_config(config: ml_collections.ConfigDict) -> None:
    """One ValueError naming the first bad field."""
    sizes = tuple(config.sizes)
    if not sizes or any(int(n) != n or n < 2 for n in sizes):
        raise ValueError(f"sizes must be integers >= 2, got {sizes}")
    if config.claim_size not in sizes:
        raise ValueError(f"claim_size {config.claim_size} is not one of sizes {sizes}")
    if not config.seeds:
        raise ValueError("seeds is empty: the error bands and claims need at least one seed")
    for name in config.composition_names:
        if name not in config.compositions:
            raise ValueError(f"composition {name!r} is not defined in compositions")
        op = config.compositions[name].op
        if op not in config.samplers_by_op:
            raise ValueError(f"composition {name!r}: op {op!r} has no samplers_by_op entry")
        for row in config.samplers_by_op[op]:
            if row not in config.samplers:
                raise ValueError(f"samplers_by_op.{op} names unknown sampler row {row!r}")
    gen = config.generalization
    gap = float(np.min(np.diff(gen.centers)))
    if gen.enabled and not 0 < gen.band < gap:
        raise ValueError(f"generalization.band must be in (0, {gap}) (the mode spacing), "
                         f"got {gen.band}")


def _train_config(config, data_path: str, seed: int) -> ml_collections.ConfigDict:
    c = copy.deepcopy(config.train)
    c.data.path = os.path.abspath(data_path)
    c.schedule.name = config.schedule.name
    c.schedule.num_levels = config.schedule.num_levels
    c.train.seed = int(seed)
    return c


def _key(config, *path: int) -> jax.Array:
    key = jax.random.PRNGKey(config.seed)
    for i in path:
        key = jax.random.fold_in(key, i)
    return key


# --- data -------------------------------------------------------------------------------------
def _save(path: str, x: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, x=np.asarray(x, np.float32))
    return path


def _data_file(workdir: str, sub: str, part: str) -> str:
    """``data/<sub>/<part>/points.npz``: one file stem for every training set, so every model
    (named after its file's stem) has the same static fields, and the train step and the
    samplers compile once per data shape and composition structure, not once per model."""
    return os.path.join(workdir, "data", sub, part, "points.npz")


def composition_data(comp, schedule, n: int, key: jax.Array) -> dict[str, np.ndarray]:
    """``n`` exact samples of each factor (by component name) and ``2n`` of the composition
    (``monolithic``)."""
    leaves = [toy2d.get(d, schedule) for d in comp.components]
    data = {d: np.asarray(leaf.sample(jax.random.fold_in(key, i), n), np.float32)
            for i, (d, leaf) in enumerate(zip(comp.components, leaves))}
    data["monolithic"] = factorized.sample(comp.op, leaves, jax.random.fold_in(key, 99), 2 * n)
    return data


def grid_target(gen, schedule) -> oracles.GaussianMixture:
    """Fig. 3's target: the 3 x 3 product of the 1D mixtures at ``centers``, std ``std``."""
    cx, cy = np.meshgrid(gen.centers, gen.centers, indexing="ij")
    means = np.stack([cx.ravel(), cy.ravel()], -1)
    return oracles.gaussian_mixture(means, gen.std, schedule, name="grid")


def slices(gen, schedule) -> tuple[factorized.TruncatedMixture, factorized.TruncatedMixture]:
    """The horizontal slice ``|y| <= band`` and the vertical slice ``|x| <= band`` of the target."""
    target, wide, b = grid_target(gen, schedule), 10.0, gen.band
    return (factorized.restrict(target, (-wide, -b), (wide, b), "horizontal slice"),
            factorized.restrict(target, (-b, -wide), (b, wide), "vertical slice"))


def held_out(x: np.ndarray, band: float) -> np.ndarray:
    """Whether each point lies in ``H = {|x| > band, |y| > band}``, where no slice reaches."""
    x = np.asarray(x, np.float64)
    return np.all(np.abs(x) > band, axis=-1)


def generalization_data(gen, schedule, n: int, key: jax.Array) -> dict[str, np.ndarray]:
    """The slices (2D, ``n`` points each), the per-axis factor data (1D) and their union."""
    h, v = slices(gen, schedule)
    xh = np.asarray(h.sample(jax.random.fold_in(key, 0), n), np.float32)
    xv = np.asarray(v.sample(jax.random.fold_in(key, 1), n), np.float32)
    return {"slice_h": xh, "slice_v": xv, "x_axis": xh[:, :1], "y_axis": xv[:, 1:],
            "monolithic": np.concatenate([xh, xv])}


# --- models -----------------------------------------------------------------------------------
def _layout(config, workdir: str, schedule) -> tuple[dict, dict]:
    """Writes every training set; returns ``{model path: training config}`` and, per cell,
    the model paths it composes."""
    jobs, cells = {}, {}
    for ci, name in enumerate(config.composition_names):
        comp = config.compositions[name]
        for n in config.sizes:
            for seed in config.seeds:
                sub = os.path.join(name, f"n{n}_s{seed}")
                data = composition_data(comp, schedule, n, _key(config, ci, n, seed))
                paths = {}
                for part, x in data.items():
                    path = os.path.join("models", sub, part)
                    file = _save(_data_file(workdir, sub, part), x)
                    jobs[path] = _train_config(config, file, seed)
                    paths[part] = path
                cells[name, n, seed] = paths
    if config.generalization.enabled:
        for seed in config.seeds:
            sub = os.path.join("generalization", f"s{seed}")
            data = generalization_data(config.generalization, schedule, config.claim_size,
                                       _key(config, 10_000, seed))
            for part in ("slice_h", "slice_v"):
                _save(_data_file(workdir, sub, part), data[part])
            paths = {}
            for part in ("x_axis", "y_axis", "monolithic"):
                file = _save(_data_file(workdir, sub, part), data[part])
                paths[part] = jobs_path = os.path.join("models", sub, part)
                jobs[jobs_path] = _train_config(config, file, seed)
            cells["generalization", seed] = paths
    return jobs, cells


# --- sampling and scores ----------------------------------------------------------------------
def _sample(density, row, schedule, key, config) -> tuple[dict, np.ndarray | None]:
    sampler = common.make_sampler(row)
    fields, x, _ = common.run_cell(lambda: density, sampler, row, schedule, key,
                                   config.num_samples, config.grid.extent)
    return fields, x


def _log_density(x: np.ndarray, target: exact.GridTarget) -> np.ndarray:
    log_p = np.asarray(target.log_prob(np.asarray(x, np.float32)), np.float64)
    return np.where(np.isfinite(log_p), np.maximum(log_p, LOG_DENSITY_FLOOR), LOG_DENSITY_FLOOR)


def _scores(x, target, reference) -> dict:
    if x is None:
        return {}
    return {"ll": metrics.ll(x, target), "mode_tv": metrics.mode_tv(x, target),
            "mmd": metrics.mmd(x, reference),
            "nonfinite": int(np.sum(~np.all(np.isfinite(x), axis=-1)))}


def _compose(op: str, leaves: list) -> compose.Density:
    return compose.product(leaves) if op == "product" else compose.mixture(leaves)


def _run_composition(config, ci: int, name: str, schedule, models: dict, cells: dict
                     ) -> tuple[list[dict], list[dict]]:
    comp = config.compositions[name]
    leaves = [toy2d.get(d, schedule) for d in comp.components]
    target = exact.on_grid(factorized.exact_composition(comp.op, leaves), 1,
                           extent=config.grid.extent, size=config.grid.size)
    reference = np.asarray(target.sample(_key(config, ci, 0), config.num_samples))
    again = np.asarray(target.sample(_key(config, ci, 1), config.num_samples))
    base = {"composition": name, "op": comp.op, "ll_exact": metrics.ll(reference, target),
            "mmd_floor": metrics.mmd(again, reference)}
    rows, claims = [], []
    for sname in config.samplers_by_op[comp.op]:
        row = config.samplers[sname]
        label = common.row_label(row)
        fields, x = _sample(_compose(comp.op, leaves), row, schedule, _key(config, ci, 2), config)
        rows.append(common.strict({**base, "kind": "oracle", "sampler": label, "n": None,
                                   "seed": None, **fields,
                                   **_scores(x, target, reference)}))
        outcomes = {k: [] for k in KINDS}
        for n in config.sizes:
            for seed in config.seeds:
                paths = cells[name, n, seed]
                densities = {"composed": _compose(comp.op, [models[paths[d]]
                                                            for d in comp.components]),
                             "monolithic": models[paths["monolithic"]]}
                key = _key(config, ci, 3, n, seed)  # shared: paired samples
                for kind in KINDS:
                    fields, x = _sample(densities[kind], row, schedule, key, config)
                    r = {**base, "kind": kind, "sampler": label, "n": n, "seed": seed,
                         "train_points": n if kind == "composed" else 2 * n, **fields,
                         **_scores(x, target, reference)}
                    rows.append(common.strict(r))
                    logging.info("%s | %s | n=%d seed=%d %s: mmd %s ll %s", name, label, n,
                                 seed, kind, r.get("mmd"), r.get("ll"))
                    if n == config.claim_size:
                        outcomes[kind].append(None if x is None else _log_density(x, target))
        claims += _claims(f"{name} ({label}), n = {config.claim_size}", rows, outcomes,
                          name, label, config.claim_size)
    return rows, claims


def seed_claim(claim: str, gains: Sequence[float]) -> dict | None:
    """The claim record (as :func:`compdiff.experiments.paired.compare`'s) of "composed beats
    monolithic" from one gain per training seed (monolithic's MMD^2 minus composed's): the
    mean gain, its 95% Student-t interval over seeds and the two-sided paired t-test p-value.
    Seeds are few (3 to 5), where a bootstrap's percentile interval is far too narrow (with
    all gains positive it reports p ~ 0 at any number of seeds); the t interval is exact for
    normal gains. None with fewer than 2 seeds."""
    d = np.asarray(gains, np.float64)
    if len(d) < 2:
        return None
    mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    half = float(stats.t.ppf(1 - paired.ALPHA / 2, len(d) - 1)) * se
    p = 1.0 if se == 0 and mean == 0 else (
        0.0 if se == 0 else float(2 * stats.t.sf(abs(mean) / se, len(d) - 1)))
    result = paired.verdict(mean, p)
    text = (f"{claim}: {result} (monolithic - composed MMD^2 = {mean:+.2e}, 95% t interval "
            f"over seeds [{mean - half:+.2e}, {mean + half:+.2e}], paired t p = {p:.3g}, "
            f"{len(d)} seeds).")
    return {"claim": claim, "a": "composed", "b": "monolithic", "estimate": mean,
            "interval": [mean - half, mean + half], "p_value": p,
            "test": "paired t over training seeds", "num_pairs": len(d), "verdict": result,
            "text": text}


def _claims(title: str, rows: list[dict], outcomes: dict, name: str, label: str, n: int
            ) -> list[dict]:
    """Composed beats monolithic: in MMD^2 over seeds, in exact log-density over samples."""
    pick = {k: {r["seed"]: r.get("mmd") for r in rows if r["composition"] == name
                and r["sampler"] == label and r["kind"] == k and r["n"] == n} for k in KINDS}
    seeds = [s for s in pick["composed"] if None not in (pick["composed"][s],
                                                         pick["monolithic"].get(s))]
    out = []
    if len(seeds) > 1:
        out.append(seed_claim(
            f"{title}: composed factors have lower MMD^2 to the exact target than the "
            "monolithic model on 2n points", [pick["monolithic"][s] - pick["composed"][s]
                                              for s in seeds]))
    pairs = [(a, b) for a, b in zip(outcomes["composed"], outcomes["monolithic"])
             if a is not None and b is not None]
    if pairs:
        out.append(paired.compare(
            f"{title}: composed factors have higher exact log-density per sample than the "
            "monolithic model (pairs = samples from common noise, pooled over seeds)",
            "composed", np.concatenate([a for a, _ in pairs]),
            "monolithic", np.concatenate([b for _, b in pairs]), binary=False))
    return out


def _run_generalization(config, schedule, models: dict, cells: dict, workdir: str
                        ) -> tuple[dict, list[dict]]:
    gen = config.generalization
    target = exact.on_grid(grid_target(gen, schedule), 1, extent=config.grid.extent,
                           size=config.grid.size)
    reference = np.asarray(target.sample(_key(config, 10_001), config.num_samples))
    exact_held_out = float(np.mean(held_out(reference, gen.band)))
    cell_mass = np.exp(np.asarray(target.log_mass, np.float64))
    lows, cell = np.asarray(target.lows), np.asarray(target.cell)
    size = cell_mass.shape[0]
    centers = lows[:, None] + (np.arange(size)[None, :] + 0.5) * cell[:, None]  # [2, size]
    in_h = held_out(np.stack(np.meshgrid(*centers, indexing="ij"), -1).reshape(-1, 2), gen.band)
    row_spec = config.samplers[gen.sampler]
    rows, outcomes, panels = [], {k: [] for k in KINDS}, {}
    for seed in config.seeds:
        paths = cells["generalization", seed]
        densities = {"composed": factorized.coordinate_product(
                         [models[paths["x_axis"]], models[paths["y_axis"]]]),
                     "monolithic": models[paths["monolithic"]]}
        key = _key(config, 10_002, seed)
        for kind in KINDS:
            fields, x = _sample(densities[kind], row_spec, schedule, key, config)
            inside = None if x is None else held_out(x, gen.band)
            rows.append(common.strict({
                "kind": kind, "seed": seed, "sampler": common.row_label(row_spec), **fields,
                "held_out": None if x is None else float(np.mean(inside)),
                **_scores(x, target, reference)}))
            outcomes[kind].append(inside)
            if seed == config.figure.seed:
                panels[kind] = x
    unions = {seed: np.concatenate([
        np.load(_data_file(workdir, os.path.join("generalization", f"s{seed}"), p))["x"]
        for p in ("slice_h", "slice_v")]) for seed in config.seeds}
    union = unions[config.figure.seed]
    plots.figure(os.path.join(workdir, "figures", "generalization.png"), [(
        "Fig. 3", [("slices' data (union)", union), ("exact target", target),
                   ("composed (per-axis models)", panels.get("composed")),
                   ("monolithic (2D model)", panels.get("monolithic"))])],
        extent=config.figure.extent)
    result = {"rows": rows, "band": gen.band, "train_points_per_slice": config.claim_size,
              "held_out_exact": float(cell_mass.ravel()[in_h].sum()),
              "held_out_exact_samples": exact_held_out,
              "training_points_held_out": int(sum(held_out(u, gen.band).sum()
                                                  for u in unions.values())),
              "ll_exact": metrics.ll(reference, target)}
    claims = []
    pairs = [(a, b) for a, b in zip(outcomes["composed"], outcomes["monolithic"])
             if a is not None and b is not None]
    if pairs:
        claims.append(paired.compare(
            "Fig. 3: the composed per-axis models put more samples in the region no training "
            "point touches than the monolithic model (pairs = samples from common noise)",
            "composed", np.concatenate([a for a, _ in pairs]),
            "monolithic", np.concatenate([b for _, b in pairs]), binary=True))
    mmd = {k: {r["seed"]: r.get("mmd") for r in rows if r["kind"] == k} for k in KINDS}
    seeds = [s for s in config.seeds if None not in (mmd["composed"][s], mmd["monolithic"][s])]
    if len(seeds) > 1:
        claims.append(seed_claim(
            "Fig. 3: the composed per-axis models have lower MMD^2 to the exact target than the "
            "monolithic model", [mmd["monolithic"][s] - mmd["composed"][s] for s in seeds]))
    return result, claims


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes the data, trains (or reuses) every model, samples and scores them."""
    check_config(config)
    schedule = schedules.get(config.schedule.name, config.schedule.num_levels)
    jobs, cells = _layout(config, workdir, schedule)
    seconds = common.train_models(jobs, workdir)
    models = {path: loading.load_model(os.path.join(workdir, path)) for path in jobs}
    rows, claims = [], []
    for ci, name in enumerate(config.composition_names):
        comp_rows, comp_claims = _run_composition(config, ci, name, schedule, models, cells)
        rows += comp_rows
        claims += comp_claims
    error_figure(os.path.join(workdir, "figures", "data_efficiency.png"), rows)
    result = {"rows": rows, "train_seconds": seconds}
    if config.generalization.enabled:
        result["generalization"], gen_claims = _run_generalization(config, schedule, models,
                                                                   cells, workdir)
        claims += gen_claims
    result["claims"] = claims
    return result


# --- figure and Markdown ----------------------------------------------------------------------
METRICS = (("mmd", "MMD^2 to exact"), ("ll", "mean exact log-density"),
           ("mode_tv", "mode-weight TV"))


def error_figure(path: str, rows: list[dict]) -> None:
    """Error against ``n`` (per factor; log x), one column per composition and sampler, one
    row per metric: mean over seeds with a min-max band, the oracle composition dashed and
    (MMD) the exact-vs-exact floor dotted."""
    plt = plots.pyplot()

    panels = list(dict.fromkeys((r["composition"], r["sampler"]) for r in rows))
    fig, axes = plt.subplots(len(METRICS), len(panels), squeeze=False,
                             figsize=(3.4 * len(panels), 2.8 * len(METRICS)))
    for j, (name, sampler) in enumerate(panels):
        for i, (metric, title) in enumerate(METRICS):
            ax = axes[i, j]
            for kind, color in (("composed", "C0"), ("monolithic", "C3")):
                sel = [r for r in rows if r["composition"] == name and r["sampler"] == sampler
                       and r["kind"] == kind]
                sizes = sorted({r["n"] for r in sel})
                vals = np.array([[np.nan if r.get(metric) is None else r[metric]
                                  for r in sel if r["n"] == n] for n in sizes], dtype=float)
                if not sizes or np.all(np.isnan(vals)):
                    continue
                ax.plot(sizes, np.nanmean(vals, 1), "o-", color=color,
                        label=f"{kind} ({'n' if kind == 'composed' else '2n'} points)")
                ax.fill_between(sizes, np.nanmin(vals, 1), np.nanmax(vals, 1), color=color,
                                alpha=0.2)
            oracle = [r for r in rows if r["composition"] == name and r["sampler"] == sampler
                      and r["kind"] == "oracle" and r.get(metric) is not None]
            if oracle:
                ax.axhline(oracle[0][metric], color="k", ls="--", lw=1, label="oracle factors")
            ref = {"mmd": "mmd_floor", "ll": "ll_exact"}.get(metric)
            if ref and oracle and oracle[0].get(ref) is not None:
                ax.axhline(oracle[0][ref], color="gray", ls=":", lw=1, label="exact samples")
            ax.set_xscale("log")
            ax.set_title(f"{name}, {sampler}" if i == 0 else "", fontsize=9)
            ax.set_ylabel(title if j == 0 else "", fontsize=8)
            ax.set_xlabel("n (points per factor)" if i == len(METRICS) - 1 else "", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6)
    common.save_figure(fig, path)


def _fmt(values: Sequence, spec: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return format(vals[0], spec)
    return f"{format(float(np.mean(vals)), spec)} ± {format(float(np.std(vals)), spec)}"


def markdown(result: dict) -> str:
    """Per composition, sampler and size: mean ± sd over seeds of each metric."""
    lines = ["| composition | sampler | model | n per factor | training points | MMD^2 "
             "(floor) | LL (exact) | mode TV |", "|---" * 8 + "|"]
    groups: dict = {}
    for r in result["rows"]:
        groups.setdefault((r["composition"], r["sampler"], r["kind"], r["n"]), []).append(r)
    for (name, sampler, kind, n), rs in groups.items():
        points = "-" if n is None else str(rs[0]["train_points"])
        failed = sum(r["status"] != "ok" for r in rs)
        note = f" ({failed} n/a)" if failed else ""
        lines.append(
            f"| {name} | {sampler} | {kind}{note} | {'-' if n is None else n} | {points} | "
            f"{_fmt([r.get('mmd') for r in rs], '.2e')} ({rs[0]['mmd_floor']:.1e}) | "
            f"{_fmt([r.get('ll') for r in rs], '.2f')} ({rs[0]['ll_exact']:.2f}) | "
            f"{_fmt([r.get('mode_tv') for r in rs], '.3f')} |")
    gen = result.get("generalization")
    if gen:
        lines += ["", f"Fig. 3 (slices |y| <= {gen['band']} and |x| <= {gen['band']}, "
                  f"{gen['train_points_per_slice']} points each; training points in the "
                  f"held-out region: {gen['training_points_held_out']}):", "",
                  "| model | fraction in held-out region (exact) | MMD^2 | LL (exact) | "
                  "mode TV |", "|---" * 5 + "|"]
        for kind in KINDS:
            rs = [r for r in gen["rows"] if r["kind"] == kind]
            lines.append(f"| {kind} | {_fmt([r.get('held_out') for r in rs], '.3f')} "
                         f"({gen['held_out_exact']:.3f}) | "
                         f"{_fmt([r.get('mmd') for r in rs], '.2e')} | "
                         f"{_fmt([r.get('ll') for r in rs], '.2f')} ({gen['ll_exact']:.2f}) | "
                         f"{_fmt([r.get('mode_tv') for r in rs], '.3f')} |")
    return "\n".join(lines) + "\n"
