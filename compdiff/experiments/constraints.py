"""Constraint composition (Du & Kaelbling 2024, Fig. 8; Yang et al. 2023): arrangements of
``n`` objects as products of pairwise relation models, scored by the constraints they satisfy.

Objects are discs of radius ``object_radius`` at positions ``p_i in [-1, 1]^2``; the space of an
arrangement is ``R^(2n)``. Three relations between objects ``i`` and ``j``:

* ``left_of``: ``x_i < x_j - margin``;
* ``near``: ``|p_i - p_j| < near_radius``;
* ``not_overlapping``: ``|p_i - p_j| > 2 object_radius``.

Each relation is one diffusion model over the 4D pair ``(p_i, p_j)`` (``configs/models/toy2d.py``,
energy parameterization, trained on ``data.path``: pairs uniform in ``[-1, 1]^4`` that satisfy
the relation, by rejection). A constraint graph over ``n`` objects is the product of its pair
factors, each lifted onto its pair's 4 coordinates (:func:`compdiff.factors.factor_graph`),

    q(p_1..p_n) ∝ prod_(i<j) p_noov(p_i, p_j) * prod_(tree edges e) p_rel(e)(p_e),

every pair kept apart, and a random spanning tree of ``left_of`` / ``near`` edges (alternating,
so all graphs of one ``n`` share a shape, and with it compiled code). A graph is kept only when
one of ``witness_tries`` random arrangements satisfies it (so it is satisfiable). No model ever
sees a graph: only pairs.

Score: the fraction of samples (denoised to level 0) satisfying EVERY constraint of their graph,
per ``n`` and sampler, pooled over the graphs of that ``n``, with Wilson 95% intervals. All
samplers of a graph share one key (the same initial noise), so the claims compare them pair by
pair (exact McNemar, :mod:`compdiff.experiments.paired`), pooled over every graph. The MCMC rows
run at equal NFE (``T (1 + kernel evaluations per level)``, +1 for the matched reference); the
``reverse`` row is the plain diffusion sampler at ``T``. ``model_check`` samples each relation
model alone (reverse diffusion) and reports how often its relation holds.

Outputs: ``constraints.json`` / ``.md`` (the protocol), ``figures/satisfaction.png`` and
``figures/arrangements.png`` (samples of the largest graph).
"""

from __future__ import annotations

import copy
import math
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from compdiff import factors, plots, samplers, schedules
from compdiff.experiments import common, paired
from compdiff.models import loading

RELATIONS = ("left_of", "near", "not_overlapping")
TREE_RELATIONS = ("left_of", "near")


# --- relations --------------------------------------------------------------------------------
def holds(relation: str, a: np.ndarray, b: np.ndarray, geometry) -> np.ndarray:
    """Whether ``relation(a, b)`` holds for positions ``a``, ``b`` ``[..., 2]``."""
    dist = np.linalg.norm(a - b, axis=-1)
    if relation == "left_of":
        return a[..., 0] < b[..., 0] - geometry.margin
    if relation == "near":
        return dist < geometry.near_radius
    if relation == "not_overlapping":
        return dist > 2 * geometry.object_radius
    raise ValueError(f"unknown relation {relation!r}; known: {list(RELATIONS)}")


def relation_data(relation: str, num: int, geometry, rng: np.random.Generator) -> np.ndarray:
    """``num`` pairs ``[num, 4]`` uniform in ``[-1, 1]^4`` that satisfy ``relation``."""
    out, have = [], 0
    while have < num:
        x = rng.uniform(-1, 1, size=(4 * num, 4)).astype(np.float32)
        x = x[holds(relation, x[:, :2], x[:, 2:], geometry)]
        out.append(x)
        have += len(x)
    return np.concatenate(out)[:num]


# --- graphs -----------------------------------------------------------------------------------
def random_graph(n: int, geometry, rng: np.random.Generator, tries: int) -> list[tuple]:
    """Edges ``(relation, i, j)``: every pair ``not_overlapping`` and a random spanning tree
    whose ``k``-th edge is ``TREE_RELATIONS[k % 2]`` (``left_of`` oriented at random), redrawn
    until one of ``tries`` random arrangements satisfies it."""
    for _ in range(100):
        order = rng.permutation(n)
        edges = [("not_overlapping", i, j) for i in range(n) for j in range(i + 1, n)]
        for k in range(1, n):
            parent = int(order[rng.integers(0, k)])
            a, b = (int(order[k]), parent) if rng.random() < 0.5 else (parent, int(order[k]))
            edges.append((TREE_RELATIONS[(k - 1) % 2], a, b))
        scenes = rng.uniform(-1, 1, size=(tries, n, 2))
        if satisfied(edges, scenes, geometry).any():
            return edges
    raise ValueError(f"found no satisfiable graph over {n} objects in 100 draws of {tries} "
                     "scenes; loosen the geometry (margin, near_radius, object_radius)")


def satisfied(edges: list[tuple], scenes: np.ndarray, geometry) -> np.ndarray:
    """Per scene ``[S, n, 2]``: whether every edge holds (non-finite scenes fail)."""
    ok = np.all(np.isfinite(scenes), axis=(1, 2))
    for relation, i, j in edges:
        ok &= holds(relation, scenes[:, i], scenes[:, j], geometry)
    return ok


def build(models: dict, edges: list[tuple], n: int) -> factors.Product:
    """The product of the graph's pair factors, each on its pair's 4 coordinates."""
    return factors.factor_graph(
        [(models[r], factors.object_coords(i, j)) for r, i, j in edges], 2 * n)


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion."""
    if total == 0:
        return (math.nan, math.nan)
    p = successes / total
    center = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, center - half), min(1.0, center + half))


# --- the experiment ---------------------------------------------------------------------------
def _check(config: ml_collections.ConfigDict) -> None:
    if not config.num_objects or any(int(n) < 2 for n in config.num_objects):
        raise ValueError(f"num_objects must be integers >= 2, got {config.num_objects}")
    for name in ("num_graphs", "num_samples", "train_pairs"):
        if int(config[name]) < 1:
            raise ValueError(f"{name} must be a positive integer, got {config[name]}")
    if not config.sampler_names:
        raise ValueError("sampler_names is empty")
    for name in config.sampler_names:
        if name not in config.samplers:
            raise ValueError(f"sampler {name!r} has no row in config.samplers; known: "
                             f"{sorted(config.samplers)}")


def train_relations(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, dict]:
    """Writes each relation's pairs and trains (or reuses) its model; ``(models, seconds)``."""
    rng = np.random.default_rng(config.seed)
    jobs = {}
    for relation in RELATIONS:
        path = os.path.join(workdir, "data", f"{relation}.npz")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.savez(path, x=relation_data(relation, config.train_pairs, config.geometry, rng))
        train = copy.deepcopy(config.train)
        train.data.path = path
        jobs[os.path.join("models", relation)] = train
    seconds = common.train_models(jobs, workdir)
    models = {r: loading.load_model(os.path.join(workdir, "models", r)) for r in RELATIONS}
    return models, seconds


def _sample(density, row, schedule, key, num) -> tuple[np.ndarray, dict]:
    """Samples of one row; a run the sampler refuses (SMC finding every weight zero: the
    chains left the composition's finite region) gives NaN samples, which satisfy nothing."""
    sampler = common.make_sampler(row)
    try:
        x, stats = samplers.sample(density, sampler, schedule, key, num)
    except ValueError as e:
        logging.warning("%s failed: %s", common.row_label(row), e)
        return (np.full((num, density.dim), np.nan),
                {"nfe": sampler.nfe(schedule.num_levels), "accept": None, "failed": 1,
                 "diverged": num})
    return np.asarray(jax.block_until_ready(x)), {"nfe": stats.nfe, "failed": 0,
                                                  "accept": stats.summary()["accept_mean"],
                                                  "diverged": stats.diverged}


def model_check(models: dict, config, schedule, key) -> dict:
    """How often each relation model's own samples (reverse diffusion) satisfy its relation."""
    out = {}
    for relation, model in models.items():
        sampler = samplers.get("reverse")
        x = np.asarray(samplers.sample(model, sampler, schedule, key, config.num_samples)[0])
        ok = holds(relation, x[:, :2], x[:, 2:], config.geometry) & np.all(np.isfinite(x), 1)
        out[relation] = {"satisfied": float(ok.mean()), "num": int(ok.size)}
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    _check(config)
    models, train_seconds = train_relations(config, workdir)
    schedule = schedules.get(config.train.schedule.name, config.train.schedule.num_levels)
    key = jax.random.PRNGKey(config.seed)
    check = model_check(models, config, schedule, jax.random.fold_in(key, 1))
    rng = np.random.default_rng(config.seed + 1)
    labels = {name: common.row_label(config.samplers[name]) for name in config.sampler_names}
    rows, outcomes, graphs, examples = [], {name: [] for name in config.sampler_names}, [], {}
    for n in config.num_objects:
        per_sampler = {name: [] for name in config.sampler_names}
        stats = {}
        failed = {name: 0 for name in config.sampler_names}
        diverged = {name: 0 for name in config.sampler_names}
        for g in range(config.num_graphs):
            edges = random_graph(int(n), config.geometry, rng, config.witness_tries)
            graphs.append({"n": int(n), "edges": edges})
            density = build(models, edges, int(n))
            cell_key = jax.random.fold_in(key, 1000 * int(n) + g)
            for name in config.sampler_names:
                x, stats[name] = _sample(density, config.samplers[name], schedule, cell_key,
                                         config.num_samples)
                failed[name] += stats[name]["failed"]
                diverged[name] += stats[name]["diverged"]
                scenes = x.reshape(-1, int(n), 2)
                ok = satisfied(edges, scenes, config.geometry)
                per_sampler[name].append(ok)
                outcomes[name].append(ok)
                if n == max(config.num_objects) and g == 0:
                    examples[name] = (scenes[:4].tolist(), edges)
            logging.info("n=%d graph %d: %s", n, g, {k: float(v[-1].mean())
                                                     for k, v in per_sampler.items()})
        for name in config.sampler_names:
            ok = np.concatenate(per_sampler[name])
            low, high = wilson(int(ok.sum()), ok.size)
            rows.append({"n": int(n), "sampler": labels[name], "row": name,
                         "satisfied": float(ok.mean()), "interval": [low, high],
                         "num": int(ok.size), "nfe": stats[name]["nfe"],
                         "accept": stats[name]["accept"], "failed_runs": failed[name],
                         "diverged": diverged[name] / ok.size})
    _figures(rows, examples, config, workdir)
    return {"rows": rows, "model_check": check, "graphs": graphs, "labels": labels,
            "outcomes": {k: np.concatenate(v).astype(int).tolist() for k, v in outcomes.items()},
            "train_seconds": train_seconds}


def markdown(result: dict) -> str:
    rows = result["rows"]
    names = list(dict.fromkeys(r["row"] for r in rows))
    ns = sorted({r["n"] for r in rows})
    cell = {(r["n"], r["row"]): r for r in rows}
    label = result["labels"]
    lines = ["Fraction of samples satisfying every constraint (Wilson 95% interval); NFE per "
             "chain in the header.", "",
             "| n | " + " | ".join(f"{label[k]} ({cell[(ns[0], k)]['nfe']})" for k in names)
             + " |", "|---|" + "---|" * len(names)]
    for n in ns:
        lines.append(f"| {n} | " + " | ".join(
            f"{cell[(n, k)]['satisfied']:.3f} [{cell[(n, k)]['interval'][0]:.3f}, "
            f"{cell[(n, k)]['interval'][1]:.3f}]" for k in names) + " |")
    lines += ["", "Fraction of chains diverged (beyond |x| = 100 or not finite at the end):", "",
              "| n | " + " | ".join(label[k] for k in names) + " |",
              "|---|" + "---|" * len(names)]
    for n in ns:
        lines.append(f"| {n} | " + " | ".join(f"{cell[(n, k)]['diverged']:.2f}" for k in names)
                     + " |")
    check = result["model_check"]
    lines += ["", "Relation models alone (reverse diffusion): " + ", ".join(
        f"{r} {v['satisfied']:.3f}" for r, v in check.items()) + " of samples satisfy their "
        "relation."]
    return "\n".join(lines) + "\n"


def claims(result: dict) -> list[dict]:
    """Each row against reverse diffusion on the same samples' noise (paired, McNemar)."""
    out = []
    base = result["outcomes"].get("reverse")
    if base is None:
        return out
    for name, ok in result["outcomes"].items():
        if name == "reverse":
            continue
        out.append(paired.compare(
            f"{result['labels'][name]} satisfies every constraint more often than reverse "
            "diffusion (all graphs pooled)", result["labels"][name], ok, "reverse", base,
            binary=True))
    return out


def _figures(rows: list[dict], examples: dict, config, workdir: str) -> None:
    plt = plots.pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["row"] for r in rows):
        rs = [r for r in rows if r["row"] == name]
        n = np.asarray([r["n"] for r in rs])
        y = np.asarray([r["satisfied"] for r in rs])
        err = np.abs(np.asarray([r["interval"] for r in rs]).T - y)
        ax.errorbar(n, y, yerr=err, marker="o", capsize=3, label=rs[0]["sampler"])
    ax.set(xlabel="number of objects", ylabel="fraction satisfying every constraint",
           ylim=(0, 1.02), title="Constraint composition (Wilson 95%)")
    ax.legend(fontsize=8)
    common.save_figure(fig, os.path.join(workdir, "figures", "satisfaction.png"))

    if not examples:
        return
    fig, axes = plt.subplots(len(examples), 4, figsize=(10, 2.6 * len(examples)), squeeze=False)
    for ax_row, (name, (scenes, edges)) in zip(axes, examples.items()):
        for ax, scene in zip(ax_row, np.asarray(scenes)):
            ok = satisfied(edges, scene[None], config.geometry)[0]
            scene = np.clip(np.nan_to_num(scene, nan=0.0), -1.2, 1.2)  # drawable positions
            for relation, i, j in edges:
                if relation != "not_overlapping":
                    ax.plot(*scene[[i, j]].T, color="C1" if relation == "near" else "C2",
                            lw=1)
            for k, p in enumerate(scene):
                ax.add_patch(plt.Circle(p, config.geometry.object_radius, alpha=0.5))
                ax.text(*p, str(k), ha="center", va="center", fontsize=7)
            ax.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal", xticks=[], yticks=[],
                   title=f"{name}: {'ok' if ok else 'violated'}")
    fig.suptitle("positions clipped to the frame: objects at its edge left the box")
    common.save_figure(fig, os.path.join(workdir, "figures", "arrangements.png"))
