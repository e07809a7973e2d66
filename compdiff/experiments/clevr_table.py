"""RRR Table 2 / Figure 3 at CPU scale: composing one position-conditional model K times.

One model ``p(image | an object centred at c)`` (RRR 5.2) is composed with
itself for ``K = 1..5`` requested positions, as Composable Diffusion and RRR do:

    log p(x | c_1..c_K) = log p(x) + w sum_i [log p(x | c_i) - log p(x)]

(:func:`compdiff.models.diffusion.classifier_free_product`, one batched network
call for the ``K + 1`` terms; ``w = 1`` is Bayes' rule for conditions
independent given the image). The requested positions of each image are the
object centres of a held-out scene with ``K`` objects, so every request is
physically possible. Each cell samples ``num_images`` images and scores them
with the evaluation classifier (:func:`accuracy`): an image is correct when
every requested position is classified as holding an object (confidence > 0.5).

Rows: ``reverse`` on both models; ``reverse_equal`` (reverse diffusion on an eps
model trained on a ``T'``-level schedule, stopped at ``sigma_1`` of ``T``, with
the NFE of the costliest MCMC row); ``ula``/``uhmc`` on both models;
``mala``/``hmc`` (and their SMC variants) on the energy model, which alone has a
log-density. The MCMC rows take one reverse step into each level before their
kernel steps (RRR's image setting), the SMC rows cannot (their weights need
invariant kernels) and run the kernels alone.

Work directory::

    models/{eps,energy,eps_equal,classifier}/   training runs (reused when finished)
    clevr_table.json, clevr_table.md            the table
    figures/                                    sample grids (requested positions circled),
                                                accuracy_vs_steps.png (RRR Figure 3b)
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from compdiff import image_grids, metrics, samplers, table2d, train
from compdiff.compose import Density, product
from compdiff.data import clevr_positions
from compdiff.data.images import to_uint8, to_unit_range
from compdiff.models import conditioning
from compdiff.models.diffusion import DiffusionModel, classifier_free_product

Array = jnp.ndarray
SCORE_ONLY = ("reverse", "reverse_equal", "ula", "uhmc")


# --- evaluation --------------------------------------------------------------------------
def presence_probs(classifier, params, images: Array, positions: Array) -> np.ndarray:
    """``P(object centred at positions[n, k] | images[n])``, ``[N, K]``."""
    n, k = positions.shape[:2]
    x = jnp.repeat(jnp.asarray(images), k, axis=0)
    logits = _classify(classifier, params, x, jnp.asarray(positions).reshape(n * k, 2))
    return np.asarray(jax.nn.sigmoid(logits[:, 0])).reshape(n, k)


@functools.partial(jax.jit, static_argnums=0)
def _classify_jit(apply, params, x, queries):
    return apply(params, x, None, conditioning.given(queries))


def _classify(classifier, params, x, queries):
    apply = train.LinenApply(classifier)
    out = [_classify_jit(apply, params, x[i:i + 512], queries[i:i + 512])
           for i in range(0, len(x), 512)]
    return jnp.concatenate(out)


def accuracy(probs: np.ndarray) -> float:
    """Fraction of images whose every requested position has confidence > 0.5 (``[N, K]``)."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or not probs.size:
        raise ValueError(f"probs must be [images, positions], got shape {probs.shape}")
    return float(np.mean(np.all(probs > 0.5, axis=1)))


def classifier_accuracy(classifier, params, source, num: int, seed: int = 0) -> float:
    """Accuracy on held-out renders: every object centre (label 1) and as many positions
    at least :data:`~compdiff.data.examples.NEGATIVE_RADIUS` from every centre (label 0)."""
    from compdiff.data.examples import negative_position

    rng = np.random.default_rng(seed)
    xs, queries, labels = [], [], []
    for i in range(min(num, len(source))):
        record = source[i]
        centers = np.asarray(record["positions"], np.float32).reshape(-1, 2)
        x = to_unit_range(record["image"])
        for c in centers:
            xs += [x, x]
            queries += [c, negative_position(centers, rng)]
            labels += [1.0, 0.0]
    logits = _classify(classifier, params, jnp.asarray(np.stack(xs)),
                       jnp.asarray(np.stack(queries)))
    return float(np.mean((np.asarray(logits[:, 0]) > 0) == (np.asarray(labels) > 0.5)))


def requested_positions(source, k: int, num: int) -> np.ndarray:
    """``[num, k, 2]``: object centres of held-out scenes with exactly ``k`` objects."""
    found = [np.asarray(source[i]["positions"], np.float32).reshape(-1, 2)
             for i in range(len(source)) if int(source[i]["count"]) == k]
    if not found:
        raise ValueError(f"no held-out scene has {k} objects")
    return np.stack([found[i % len(found)] for i in range(num)])


# --- samplers ----------------------------------------------------------------------------
def make_sampler(spec: ml_collections.ConfigDict, steps: int | None = None,
                 budget: int = 0) -> samplers.Sampler:
    """A table row's sampler from its config entry (RRR image settings by default)."""
    name = spec.sampler
    if name == "reverse":
        return samplers.get("reverse")
    if name == "reverse_equal":
        return samplers.get("reverse_equal", budget=budget)
    kwargs: dict[str, Any] = dict(
        steps_per_level=steps or spec.steps_per_level,
        step=samplers.StepRule(spec.step, spec.get("step_power", 1.0)),
        reverse_first=spec.get("resample_ess", 0.0) == 0.0,
        resample_ess=spec.get("resample_ess", 0.0))
    if name in ("hmc", "uhmc"):
        kwargs.update(leapfrog=spec.leapfrog, damping=spec.damping,
                      mass=samplers.MassRule(1.0, spec.get("mass_power", 1.0)))
    return samplers.get(name, **kwargs)


def row_label(spec: ml_collections.ConfigDict) -> str:
    return spec.sampler + ("+smc" if spec.get("resample_ess", 0.0) > 0 else "")


def composition(model: DiffusionModel, positions: np.ndarray, scale: float,
                pad_to: int = 0) -> Density:
    """``log p(x) + scale * sum_i [log p(x|c_i) - log p(x)]`` over ``positions [num, K, 2]``.

    ``pad_to > K`` adds conditions of weight 0 (copies of the first), so every ``K``
    gives one structure and the sampler compiles once for all of them: compiling the
    annealed scan over the UNet's vjp takes longer than sampling 32 images at this
    scale, so the zero-weight rows cost less than the compilations they save.
    """
    k = positions.shape[1]
    pads = max(pad_to - k, 0)
    values = [positions[:, i] for i in range(k)] + [positions[:, 0]] * pads
    if pads == 0:
        return classifier_free_product(model, [jnp.asarray(v) for v in values], scale)
    terms = [model.unconditional()] + [model.condition(jnp.asarray(v)) for v in values]
    return product(terms, [1.0 - k * scale] + [scale] * k + [0.0] * pads)


def _pad_to(config: ml_collections.ConfigDict) -> int:
    return max(config.num_positions) if config.get("pad_conditions", False) else 0


def sample_cell(model: DiffusionModel, positions: np.ndarray, sampler: samplers.Sampler,
                key: Array, scale: float, schedule=None, pad_to: int = 0
                ) -> tuple[np.ndarray, Any]:
    """``num`` images composed over ``positions [num, K, 2]`` (one set per image)."""
    target = composition(model, positions, scale, pad_to)
    x, stats = samplers.sample(target, sampler, schedule or model.schedule, key,
                               positions.shape[0], mesh=None)
    return np.asarray(x), stats


# --- the table ---------------------------------------------------------------------------
def train_models(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or reuses) every model the table needs; seconds per model."""
    seconds = {}
    for name, sub in config.models.items():
        if name not in needed_models(config):
            continue
        t0 = time.time()
        logging.info("clevr_table: training %s", name)
        train.train(sub, os.path.join(workdir, "models", name))
        seconds[name] = time.time() - t0
    return seconds


def needed_models(config: ml_collections.ConfigDict) -> list[str]:
    """The models the rows use: ``eps_equal`` only for a ``reverse_equal`` row."""
    names = {"energy", "classifier"} | {m for r in config.rows for m in r.models}
    if any(r.sampler == "reverse_equal" for r in config.rows):
        names.add("eps_equal")
    return sorted(names)


def equal_nfe_budget(config: ml_collections.ConfigDict) -> int:
    """The NFE per chain of the costliest MCMC row (what ``reverse_equal`` spends)."""
    t = config.models.energy.schedule.num_levels
    best = 0
    for spec in config.rows:
        if spec.sampler in ("reverse", "reverse_equal"):
            continue
        best = max(best, make_sampler(spec).nfe(t))
    return best


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    t_start = time.time()
    workdir = os.path.abspath(workdir)
    os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
    for sub in config.models.values():
        sub.data.data_dir = config.data_dir
    data = config.models.energy.data
    clevr_positions.prepare(data.builder_config, os.path.expanduser(data.data_dir))
    train_seconds = train_models(config, workdir)
    models = {name: train.load_model(os.path.join(workdir, "models", name))
              for name in ("eps", "energy") if name in needed_models(config)}
    _, classifier, cparams = train.load_params(os.path.join(workdir, "models", "classifier"))
    test = clevr_positions.data_source(data.builder_config, "test",
                                       os.path.expanduser(data.data_dir))
    clf_acc = classifier_accuracy(classifier, cparams, test, config.classifier_eval_images)
    logging.info("clevr_table: classifier accuracy on held-out renders %.3f", clf_acc)
    image_shape = tuple(int(n) for n in np.shape(test[0]["image"]))
    rows = []
    for k in config.num_positions:
        positions = requested_positions(test, k, config.num_images)
        for spec in config.rows:
            for model_name in spec.models:
                rows.append(_cell(config, workdir, models, model_name, spec, k, positions,
                                  classifier, cparams, image_shape))
    curve = _steps_curve(config, workdir, models["energy"], test, classifier, cparams)
    result = {"rows": rows, "classifier_accuracy": clf_acc, "steps_curve": curve,
              "train_seconds": train_seconds, "machine": table2d.machine(),
              "config": json.loads(config.to_json()), "wall_seconds": time.time() - t_start}
    with open(os.path.join(workdir, "clevr_table.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(workdir, "clevr_table.md"), "w") as f:
        f.write(markdown(result))
    logging.info("clevr_table done in %.0fs: %s", result["wall_seconds"], workdir)
    return result


def _cell(config, workdir, models, model_name, spec, k, positions, classifier, cparams,
          image_shape) -> dict:
    label = row_label(spec)
    base = {"num_positions": k, "model": model_name, "sampler": label}
    if model_name == "eps" and spec.sampler not in SCORE_ONLY:
        return {**base, "status": "n/a",
                "reason": f"{spec.sampler} needs a log-density; the eps model is score-only"}
    model, schedule = models[model_name], None
    if spec.sampler == "reverse_equal":  # an eps model trained on the T'-level schedule
        model = train.load_model(os.path.join(workdir, "models", "eps_equal"))
        schedule = model.schedule
        sampler = make_sampler(spec, budget=equal_nfe_budget(config))
    else:
        sampler = make_sampler(spec)
    key = jax.random.fold_in(jax.random.key(config.seed), 1000 * k + len(label))
    t0 = time.time()
    x, stats = sample_cell(model, positions, sampler, key, config.guidance_scale, schedule,
                           pad_to=_pad_to(config))
    seconds = time.time() - t0
    acc = accuracy(presence_probs(classifier, cparams, x, positions))
    images = to_uint8(x, image_shape)
    if k in config.grid_positions:
        image_grids.save_grid(images[:16], os.path.join(
            workdir, "figures", f"k{k}_{model_name}_{label}.png"), marks=positions[:16])
    logging.info("K=%d %-6s %-14s accuracy %.3f  nfe %d  %.1fs", k, model_name, label, acc,
                 stats.nfe, seconds)
    accept = np.asarray(stats.accept)
    return {**base, "accuracy": acc, "nfe": int(stats.nfe), "seconds": seconds,
            "diverged": int(stats.diverged),
            "accept": None if np.all(np.isnan(accept)) else float(np.nanmean(accept))}


def _steps_curve(config, workdir, model, test, classifier, cparams) -> list[dict]:
    """RRR Figure 3b: accuracy against MCMC steps per level (energy model)."""
    import matplotlib.pyplot as plt

    curve = []
    k = config.curve.num_positions
    positions = requested_positions(test, k, config.num_images)
    for spec in config.curve.rows:
        for steps in config.curve.steps:
            sampler = make_sampler(spec, steps=steps)
            x, stats = sample_cell(model, positions, sampler,
                                   jax.random.fold_in(jax.random.key(config.seed), steps),
                                   config.guidance_scale, pad_to=_pad_to(config))
            acc = accuracy(presence_probs(classifier, cparams, x, positions))
            curve.append({"sampler": row_label(spec), "steps_per_level": steps,
                          "accuracy": acc, "nfe": int(stats.nfe)})
            logging.info("curve K=%d %s steps %d accuracy %.3f", k, row_label(spec), steps, acc)
    fig, ax = plt.subplots(figsize=(4, 3))
    for label in dict.fromkeys(c["sampler"] for c in curve):
        pts = [(c["steps_per_level"], c["accuracy"]) for c in curve if c["sampler"] == label]
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("MCMC steps per level")
    ax.set_ylabel(f"accuracy, {k} positions")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "figures", "accuracy_vs_steps.png"), dpi=120)
    plt.close(fig)
    return curve


def _mean_accuracy(rows: list[dict], model: str, sampler: str, ks: list[int]) -> float | None:
    vals = [r["accuracy"] for r in rows if r["model"] == model and r["sampler"] == sampler
            and r["num_positions"] in ks and "accuracy" in r]
    return float(np.mean(vals)) if len(vals) == len(ks) else None


def claims(result: dict) -> list[str]:
    """RRR's claims checked on the table (mean accuracy over 3-5 composed positions):
    MCMC beats reverse diffusion, and Metropolis-adjusted beats unadjusted. Where a
    claim fails, the SMC rows (asymptotically exact for the models' own composition)
    and the single-position accuracy (the model alone) say whether the sampler or the
    model is short."""
    rows = result["rows"]
    ks = [k for k in sorted({r["num_positions"] for r in rows}) if k >= 3]
    if not ks:
        return []
    acc = {(m, s): _mean_accuracy(rows, m, s, ks)
           for m, s in dict.fromkeys((r["model"], r["sampler"]) for r in rows)}
    acc = {key: v for key, v in acc.items() if v is not None}
    span = f"{ks[0]}-{ks[-1]}" if len(ks) > 1 else str(ks[0])
    lines = [f"Mean accuracy over {span} composed positions: " + ", ".join(
        f"{m} {s} {v:.2f}" for (m, s), v in acc.items()) + "."]
    n = result["config"]["num_images"] * len(ks)

    reverse = {key: v for key, v in acc.items() if key[1] in ("reverse", "reverse_equal")}
    mcmc = {key: v for key, v in acc.items() if key not in reverse}
    if reverse and mcmc:
        best, rev = max(mcmc, key=mcmc.get), max(reverse, key=reverse.get)
        verdict = metrics.proportion_verdict(mcmc[best], reverse[rev], n)
        lines.append(f"MCMC beats reverse diffusion: {verdict} "
                     f"(best MCMC, {' '.join(best)}, {mcmc[best]:.2f}; best reverse, "
                     f"{' '.join(rev)}, {reverse[rev]:.2f}).")
    for adjusted, unadjusted in (("mala", "ula"), ("hmc", "uhmc")):
        a, u = acc.get(("energy", adjusted)), acc.get(("energy", unadjusted))
        if a is not None and u is not None:
            lines.append(f"Metropolis-adjusted beats unadjusted, {adjusted} vs {unadjusted} "
                         f"(energy model): {metrics.proportion_verdict(a, u, n)} "
                         f"({a:.2f} vs {u:.2f}).")
    single = [r["accuracy"] for r in rows if r["num_positions"] == 1 and "accuracy" in r
              and r["sampler"] == "reverse"]
    smc = {s: v for (m, s), v in acc.items() if s.endswith("+smc")}
    if single:
        lines.append(f"Model alone (one position, reverse diffusion): accuracy "
                     f"{max(single):.2f}." + (" With SMC resampling (exact for the models' "
                     "own composition as chains grow): " + ", ".join(
                         f"{s} {v:.2f}" for s, v in smc.items()) + "." if smc else ""))
    return lines


def markdown(result: dict) -> str:
    """Accuracy by sampler (rows) and number of composed positions (columns)."""
    rows = result["rows"]
    ks = sorted({r["num_positions"] for r in rows})
    keys = list(dict.fromkeys((r["model"], r["sampler"]) for r in rows))
    lines = ["| model | sampler | " + " | ".join(f"{k} pos." for k in ks) + " | NFE |",
             "|---|---|" + "---|" * (len(ks) + 1)]
    for model, sampler in keys:
        cells, nfe = [], "-"
        for k in ks:
            r = next(r for r in rows if (r["model"], r["sampler"], r["num_positions"])
                     == (model, sampler, k))
            if r.get("status") == "n/a":
                cells.append("n/a")
            else:
                cells.append(f"{r['accuracy']:.2f}")
                nfe = str(r["nfe"])
        if all(c == "n/a" for c in cells):
            continue
        lines.append(f"| {model} | {sampler} | " + " | ".join(cells) + f" | {nfe} |")
    lines += [""] + claims(result)
    lines.append(f"\nEvaluation classifier accuracy on held-out renders: "
                 f"{result['classifier_accuracy']:.3f}.")
    if result.get("steps_curve"):
        lines.append("\nAccuracy against MCMC steps per level (energy model): " + ", ".join(
            f"{c['sampler']} {c['steps_per_level']}: {c['accuracy']:.2f}"
            for c in result["steps_curve"]) + ".")
    lines.append(f"\nMachine: {result['machine']}. Wall time {result['wall_seconds']:.0f}s "
                 f"(training {sum(result['train_seconds'].values()):.0f}s).")
    return "\n".join(lines) + "\n"
