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
the NFE of the costliest MCMC row, :func:`compdiff.experiments.common.equal_nfe`);
``ula``/``uhmc`` on both models;
``mala``/``hmc`` (and their SMC variants) on the energy model, which alone has a
log-density. The MCMC rows take one reverse step into each level before their
kernel steps (RRR's image setting), the SMC rows cannot (their weights need
invariant kernels) and run the kernels alone. A row whose sampler needs a log-density
(the registry says which) is n/a on the score-only eps model.

Paired: every row of a ``K`` samples from one key and the same requested positions, so
image ``i`` of every row starts from the same noise; the claims test per-image
correctness with the exact McNemar test (:mod:`compdiff.experiments.paired`).

Work directory::

    models/{eps,energy,eps_equal,classifier}/   training runs (reused when finished)
    clevr_table.json, clevr_table.md            the table (the protocol writes them)
    figures/                                    sample grids (requested positions circled),
                                                accuracy_vs_steps.png (RRR Figure 3b)
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from compdiff import image_grids, plots, samplers
from compdiff.compose import Density, product
from compdiff.data import clevr_positions
from compdiff.data.images import to_uint8, to_unit_range
from compdiff.evaluation import noise_images
from compdiff.evaluation.batched import batched_apply
from compdiff.experiments import common, paired
from compdiff.models import conditioning, loading
from compdiff.models.diffusion import DiffusionModel, LinenApply, classifier_free_product

Array = jnp.ndarray


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
    apply = LinenApply(classifier)
    return batched_apply(functools.partial(_classify_jit, apply, params), x, queries,
                         batch_size=512)


def correct(probs: np.ndarray) -> np.ndarray:
    """Per image: whether every requested position has confidence > 0.5 (``[N, K]`` -> ``[N]``)."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or not probs.size:
        raise ValueError(f"probs must be [images, positions], got shape {probs.shape}")
    return np.all(probs > 0.5, axis=1)


def accuracy(probs: np.ndarray) -> float:
    """Fraction of images whose every requested position has confidence > 0.5 (``[N, K]``)."""
    return float(np.mean(correct(probs)))


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


# --- compositions -----------------------------------------------------------------------
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
                key: Array, scale: float, schedule=None, pad_to: int = 0, populations: int = 1
                ) -> tuple[np.ndarray, Any]:
    """``num`` images composed over ``positions [num, K, 2]`` (one set per image)."""
    target = composition(model, positions, scale, pad_to)
    x, stats = samplers.sample(target, sampler, schedule or model.schedule, key,
                               positions.shape[0], mesh=None, populations=populations)
    return np.asarray(x), stats


def sample_per_image(model: DiffusionModel, positions: np.ndarray, sampler: samplers.Sampler,
                     key: Array, scale: float, population: int, schedule=None, pad_to: int = 0
                     ) -> tuple[np.ndarray, Any]:
    """SMC resamples across chains, and every image asks for its own positions, so each
    image runs as its own population of ``population`` chains (the driver's
    ``populations``), as many images per call as keep a call at ``num`` chains, the size
    of a plain row's call; the image is one chain drawn by its population's weights."""
    if population < 2:
        raise ValueError(f"an SMC population needs at least 2 chains, got {population}")
    num = positions.shape[0]
    per_call = max(1, num // population)
    images, stats = [], None
    for start in range(0, num, per_call):
        block = positions[start:start + per_call]
        call_key = jax.random.fold_in(key, start)
        x, stats = sample_cell(model, np.repeat(block, population, axis=0), sampler, call_key,
                               scale, schedule, pad_to, populations=len(block))
        log_w = (jnp.zeros((len(block), population)) if stats.log_weights is None else
                 jnp.nan_to_num(stats.log_weights, nan=-jnp.inf).reshape(-1, population))
        pick = np.asarray(jax.random.categorical(jax.random.fold_in(call_key, 1), log_w, -1))
        images.append(x.reshape(len(block), population, -1)[np.arange(len(block)), pick])
    return np.concatenate(images), stats


# --- the table ---------------------------------------------------------------------------
def needed_models(config: ml_collections.ConfigDict) -> list[str]:
    """The models the rows use: ``eps_equal`` only for a ``reverse_equal`` row."""
    names = {"energy", "classifier"} | {m for r in config.rows for m in r.models}
    if common.uses_equal(config.rows):
        names.add("eps_equal")
    return sorted(names)


def equal_nfe_budget(config: ml_collections.ConfigDict) -> int:
    """The NFE per chain of the costliest MCMC row (what ``reverse_equal`` spends)."""
    schedule = config.models.energy.schedule
    equal = common.equal_nfe(config.rows, schedule.name, schedule.num_levels)
    return equal.nfe if equal else 0


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The rows (one per K, row and model), the classifier's accuracy and the steps curve."""
    workdir = os.path.abspath(workdir)
    os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
    for sub in config.models.values():
        sub.data.data_dir = config.data_dir
    data = config.models.energy.data
    clevr_positions.prepare(data.builder_config, os.path.expanduser(data.data_dir))
    needed = needed_models(config)
    train_seconds = common.train_models(
        {f"models/{n}": config.models[n] for n in config.models if n in needed}, workdir)
    models = {name: loading.load_model(os.path.join(workdir, "models", name))
              for name in ("eps", "energy", "eps_equal") if name in needed}
    _, classifier, cparams = loading.load_params(os.path.join(workdir, "models", "classifier"))
    test = clevr_positions.data_source(data.builder_config, "test",
                                       os.path.expanduser(data.data_dir))
    clf_acc = classifier_accuracy(classifier, cparams, test, config.classifier_eval_images)
    logging.info("clevr_table: classifier accuracy on held-out renders %.3f", clf_acc)
    image_shape = tuple(int(n) for n in np.shape(test[0]["image"]))
    budget = equal_nfe_budget(config)
    rows = []
    for k in config.num_positions:
        positions = requested_positions(test, k, config.num_images)
        key = jax.random.fold_in(jax.random.key(config.seed), k)  # one key per K: paired rows
        for spec in config.rows:
            for model_name in spec.models:
                rows.append(_cell(config, workdir, models, model_name, spec, k, positions, key,
                                  budget, classifier, cparams, image_shape))
    curve = _steps_curve(config, workdir, models["energy"], test, classifier, cparams)
    return {"rows": rows, "classifier_accuracy": clf_acc, "steps_curve": curve,
            "train_seconds": train_seconds}


def _cell(config, workdir, models, model_name, spec, k, positions, key, budget, classifier,
          cparams, image_shape) -> dict:
    label = common.row_label(spec)
    sampler = common.make_sampler(spec, budget)
    base = {"num_positions": k, "model": model_name, "sampler": label,
            "kernel_steps": sampler.num_kernel_steps}
    model, schedule = models[model_name], None
    if sampler.name == common.EQUAL:  # an eps model trained on the T'-level schedule
        model = models["eps_equal"]
        schedule = model.schedule
    reason = common.log_density_reason(sampler, model.has_log_prob, model_name)
    if reason:
        return {**base, "status": "n/a", "reason": reason}
    t0 = time.time()
    if sampler.resample_ess > 0:  # one population per image (pairs with the rows by image)
        x, stats = sample_per_image(model, positions, sampler, key, config.guidance_scale,
                                    config.smc_population, schedule, pad_to=_pad_to(config))
        base["population"] = config.smc_population
    else:
        x, stats = sample_cell(model, positions, sampler, key, config.guidance_scale,
                               schedule, pad_to=_pad_to(config))
    seconds = time.time() - t0
    images = to_uint8(x, image_shape)
    # A noise image is never correct: the presence classifier finds objects in noise that
    # a composition pushed toward its positions (adapted MALA SMC: 0.94 "correct", all noise).
    noise = noise_images.is_noise(images)
    hits = correct(presence_probs(classifier, cparams, x, positions)) & ~noise
    if k in config.grid_positions:
        image_grids.save_grid(images[:16], os.path.join(
            workdir, "figures", f"k{k}_{model_name}_{label}.png"), marks=positions[:16])
    logging.info("K=%d %-6s %-14s accuracy %.3f  nfe %d  %.1fs", k, model_name, label,
                 hits.mean(), stats.nfe, seconds)
    accept = np.asarray(stats.accept)
    return {**base, "accuracy": float(hits.mean()), "correct": hits.astype(int).tolist(),
            "noise": int(noise.sum()), "num_images": len(images),
            "nfe": int(stats.nfe), "seconds": seconds, "diverged": int(stats.diverged),
            "accept": None if np.all(np.isnan(accept)) else float(np.nanmean(accept))}


def _steps_curve(config, workdir, model, test, classifier, cparams) -> list[dict]:
    """RRR Figure 3b: accuracy against MCMC steps per level (energy model)."""
    plt = plots.pyplot()

    curve = []
    k = config.curve.num_positions
    positions = requested_positions(test, k, config.num_images)
    key = jax.random.fold_in(jax.random.key(config.seed), k)  # the table's key for this K
    for spec in config.curve.rows:
        for steps in config.curve.steps:
            sampler = common.make_sampler(spec, steps_per_level=steps)
            x, stats = sample_cell(model, positions, sampler, key, config.guidance_scale,
                                   pad_to=_pad_to(config))
            acc = accuracy(presence_probs(classifier, cparams, x, positions))
            label = common.row_label(spec)
            curve.append({"sampler": label, "steps_per_level": steps,
                          "accuracy": acc, "nfe": int(stats.nfe)})
            logging.info("curve K=%d %s steps %d accuracy %.3f", k, label, steps, acc)
    fig, ax = plt.subplots(figsize=(4, 3))
    for label in dict.fromkeys(c["sampler"] for c in curve):
        pts = [(c["steps_per_level"], c["accuracy"]) for c in curve if c["sampler"] == label]
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("MCMC steps per level")
    ax.set_ylabel(f"accuracy, {k} positions")
    ax.legend(fontsize=7)
    common.save_figure(fig, os.path.join(workdir, "figures", "accuracy_vs_steps.png"))
    return curve


def _outcomes(rows: list[dict], model: str, sampler: str, ks: list[int]) -> list[int] | None:
    """The per-image outcomes of one (model, sampler) row over ``ks``, in order (pairs line
    up across rows: same K, same image index, same noise and positions)."""
    found = {r["num_positions"]: r["correct"] for r in rows if "correct" in r
             and (r["model"], r["sampler"]) == (model, sampler) and r["num_positions"] in ks}
    return [c for k in ks for c in found[k]] if len(found) == len(ks) else None


def claims(result: dict) -> list[dict]:
    """RRR's claims on 3-5 composed positions, on paired per-image outcomes: the best MCMC
    row beats the best reverse-diffusion row, and Metropolis-adjusted beats unadjusted
    (mala vs ula, hmc vs uhmc on the energy model)."""
    rows = result["rows"]
    ks = [k for k in sorted({r["num_positions"] for r in rows}) if k >= 3]
    if not ks:
        return []
    keys = dict.fromkeys((r["model"], r["sampler"], r["kernel_steps"]) for r in rows)
    outcomes = {(m, s): o for m, s, _ in keys if (o := _outcomes(rows, m, s, ks)) is not None}
    mcmc = [(m, s) for m, s, steps in keys if steps > 0 and (m, s) in outcomes]
    reverse = [(m, s) for m, s, steps in keys if steps == 0 and (m, s) in outcomes]
    span = f"{ks[0]}-{ks[-1]}" if len(ks) > 1 else str(ks[0])
    out = []
    if mcmc and reverse:
        best = max(mcmc, key=lambda key: np.mean(outcomes[key]))
        rev = max(reverse, key=lambda key: np.mean(outcomes[key]))
        out.append(paired.compare(f"MCMC beats reverse diffusion ({span} positions)",
                                  " ".join(best), outcomes[best], " ".join(rev), outcomes[rev],
                                  binary=True))
    for adjusted, unadjusted in (("mala", "ula"), ("hmc", "uhmc")):
        a, u = outcomes.get(("energy", adjusted)), outcomes.get(("energy", unadjusted))
        if a is not None and u is not None:
            out.append(paired.compare(
                f"Metropolis-adjusted beats unadjusted, {adjusted} vs {unadjusted} "
                f"(energy model, {span} positions)", adjusted, a, unadjusted, u, binary=True))
    return out


def _notes(result: dict) -> list[str]:
    """The model alone (one position, reverse diffusion) and the SMC rows, which say whether
    a failed claim is the sampler's or the model's."""
    rows = result["rows"]
    single = [r["accuracy"] for r in rows if r["num_positions"] == 1 and "accuracy" in r
              and r["sampler"] == "reverse"]
    ks = [k for k in sorted({r["num_positions"] for r in rows}) if k >= 3]
    smc: dict[str, list[float]] = {}
    for r in rows:
        if r["sampler"].endswith("+smc") and "accuracy" in r and r["num_positions"] in ks:
            smc.setdefault(r["sampler"], []).append(r["accuracy"])
    if not single:
        return []
    line = f"Model alone (one position, reverse diffusion): accuracy {max(single):.2f}."
    if smc:
        line += (" With SMC resampling (exact for the models' own composition as chains "
                 "grow): " + ", ".join(f"{s} {np.mean(v):.2f}" for s, v in smc.items()) + ".")
    return [line]


def markdown(result: dict) -> str:
    """Accuracy by sampler (rows) and number of composed positions (columns)."""
    rows = result["rows"]
    ks = sorted({r["num_positions"] for r in rows})
    keys = list(dict.fromkeys((r["model"], r["sampler"]) for r in rows))
    lines = ["| model | sampler | " + " | ".join(f"{k} pos." for k in ks) + " | NFE | noise |",
             "|---|---|" + "---|" * (len(ks) + 2)]
    for model, sampler in keys:
        cells, nfe, noise, total = [], "-", 0, 0
        for k in ks:
            r = next(r for r in rows if (r["model"], r["sampler"], r["num_positions"])
                     == (model, sampler, k))
            if r.get("status") == "n/a":
                cells.append("n/a")
            else:
                cells.append(f"{r['accuracy']:.2f}")
                nfe = str(r["nfe"])
                noise, total = noise + r.get("noise", 0), total + len(r["correct"])
        if all(c == "n/a" for c in cells):
            continue
        lines.append(f"| {model} | {sampler} | " + " | ".join(cells) + f" | {nfe} | "
                     f"{noise}/{total} |")
    lines += [""] + _notes(result)
    lines.append(f"\nEvaluation classifier accuracy on held-out renders: "
                 f"{result['classifier_accuracy']:.3f}.")
    if result.get("steps_curve"):
        lines.append("\nAccuracy against MCMC steps per level (energy model): " + ", ".join(
            f"{c['sampler']} {c['steps_per_level']}: {c['accuracy']:.2f}"
            for c in result["steps_curve"]) + ".")
    return "\n".join(lines) + "\n"
