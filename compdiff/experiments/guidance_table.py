"""RRR Table 3 at CPU scale: an unconditional diffusion model guided by a classifier.

RRR section 5.3 composes an unconditional model with a noise-conditional
classifier (:mod:`compdiff.guidance`):

    log p_t(x | y) = log p_t(x) + lam log p_phi(y | x_t, t)

With an energy model the guided density has a log-density, so MALA, HMC and SMC
apply; with an eps model only the score-only samplers do. Every image row asks
for one class per chain (the classes in turn) and is scored by a separately
trained *clean* classifier (the judge): a sample is correct when the judge gives
the requested class probability > 0.5 (RRR), plus the Frechet distance and
precision / recall (Kynkaanniemi et al. 2019) in the judge's penultimate
features against held-out real images (named as such, never FID:
:mod:`compdiff.evaluation.image_metrics`). Samples are also written in the ADM evaluation
suite's npz layout, so a user with real ImageNet computes FID / IS with the
standard tool.

Rows per dataset: ``reverse`` on both models, ``reverse_equal`` (the eps model on
the longer schedule that costs what the costliest MCMC row costs), ``ula`` /
``uhmc`` on both, ``mala`` / ``hmc`` (and SMC variants) on the energy model, and
classifier-free guidance of a class-conditional eps model of the same size
(``cfg``: ``log p(x) + w [log p(x|y) - log p(x)]``), all at ``config.scale``;
then accuracy against the guidance scale per sampler. A row whose sampler needs a
log-density (the registry says which) is n/a on the eps model.

Paired: every image row of a dataset at one scale samples from one key and asks the same
classes in the same order, so image ``i`` of every row starts from the same noise (SMC
rows excepted: they run each class as its own population, from its own noise, and pair
with the others by class only); the held-out block likewise. The claims test per-image
correctness with the exact McNemar test (:mod:`compdiff.experiments.paired`).

Held-out pairs (``scene_classes``): the generator and the joint guidance classifier are
trained without (cube, red), (sphere, green), (cylinder, blue), so the main rows ask only
for the 9 seen pairs; the held-out block asks for the other 3 by composing one classifier
per attribute, ``log p_t(x) + lam [log p(shape | x_t) + log p(colour | x_t)]``, against
the joint classifier asked for labels it never saw, both judged by a judge that saw all 12.

Oracle rows (sampler error alone): a 2D Gaussian mixture guided by its exact
posterior over components (:meth:`compdiff.oracles.GaussianMixture.component_classifier`);
the exact level-0 target ``p(x) p(k|x)^lam`` is tabulated on a grid and every
sampler is scored by MMD against exact samples of it (with the exact-vs-exact
floor) and by the fraction of samples whose exact posterior of ``k`` is > 0.5.

Work directory::

    <dataset>/models/{eps,energy,eps_equal,classifier,judge,conditional}/
    <dataset>/samples/<model>_<sampler>.npz       ADM layout: arr_0 uint8 NHWC, and labels
    guidance_table.json, guidance_table.md        (the protocol writes them)
    figures/<dataset>_<model>_<sampler>.png       one row per requested class
    figures/accuracy_vs_scale.png
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

from compdiff import exact, image_grids, plots, samplers, schedules
from compdiff.compose import Density
from compdiff.data import images as image_data
from compdiff.data import scene_classes
from compdiff.evaluation import image_metrics, metrics, noise_images
from compdiff.evaluation.batched import batched_apply
from compdiff.experiments import common, paired
from compdiff.guidance import Classifier
from compdiff.models import loading
from compdiff.models.diffusion import DiffusionModel, classifier_free_product
from compdiff.oracles import GaussianMixture, gaussian_mixture

Array = jnp.ndarray
MODEL_KINDS = ("eps", "energy", "eps_equal", "classifier", "judge", "conditional",
               "shape_classifier", "colour_classifier")


# --- evaluation ------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def _judge_batch(module, params, x):
    logits = module.apply({"params": params}, x, None, None)
    if logits.shape[-1] == 1:  # a binary single-logit classifier: logits (0, l)
        logits = jnp.concatenate([jnp.zeros_like(logits), logits], -1)
    feats = module.apply({"params": params}, x, None, None, features=True)
    return jax.nn.softmax(logits, axis=-1), feats


def judge(module, params, x: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The clean classifier's class probabilities ``[N, C]`` and penultimate features."""
    return batched_apply(functools.partial(_judge_batch, module, params), x, batch_size=chunk)


def correct(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample: whether its requested class has probability > 0.5 (RRR)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be [N, classes] and labels [N], got {probs.shape} and "
                         f"{labels.shape}")
    return probs[np.arange(len(labels)), labels] > 0.5


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose requested class has probability > 0.5 (RRR)."""
    return float(np.mean(correct(probs, labels)))


def requested_classes(num: int, num_classes: int) -> np.ndarray:
    """``[num]`` class ids in turn (``0, 1, .., C-1, 0, ..``), so every class is asked."""
    return np.arange(num) % num_classes


def asked_classes(config: ml_collections.ConfigDict, num_classes: int) -> np.ndarray:
    """``[num_images]`` requested labels: ``config.classes`` in turn (default: every class)."""
    classes = np.asarray(config.get("classes") or range(num_classes))
    return classes[requested_classes(config.num_images, len(classes))]


def real_images(source, num: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num`` held-out images (flat, in ``[-1, 1]``) and their labels."""
    n = min(num, len(source))
    records = [source[i] for i in range(n)]
    return (np.stack([image_data.to_unit_range(r["image"]) for r in records]),
            np.asarray([int(r["label"]) for r in records]))


# --- compositions ----------------------------------------------------------------------
def guided(model: DiffusionModel, classifier: Classifier, labels: Array, scale: float
           ) -> Density:
    """``log p_t(x) + scale log p_phi(y | x_t, t)`` (RRR 5.3)."""
    return model * classifier.given(labels) ** scale


def attribute_guided(model: DiffusionModel, shape: Classifier, colour: Classifier,
                     shapes: Array, colours: Array, scale: float) -> Density:
    """``log p_t(x) + lam [log p(shape | x_t) + log p(colour | x_t)]``: one classifier per
    attribute, so a pair the joint classifier (and the generator) never saw can be asked
    (Du & Kaelbling; RRR)."""
    return model * shape.given(shapes) ** scale * colour.given(colours) ** scale


def classifier_free(model: DiffusionModel, labels: np.ndarray, num_classes: int,
                    scale: float) -> Density:
    """``log p(x) + scale [log p(x|y) - log p(x)]`` of a class-conditional model."""
    one_hot = jax.nn.one_hot(jnp.asarray(labels), num_classes)
    return classifier_free_product(model, [one_hot], scale)


# --- one dataset -----------------------------------------------------------------------
def _load(workdir: str, kind: str):
    return loading.load_params(os.path.join(workdir, "models", kind))


def needed_models(config: ml_collections.ConfigDict) -> list[str]:
    names = {"energy", "classifier", "judge"} | {m for r in config.rows for m in r.models}
    if common.uses_equal(config.rows):
        names.add("eps_equal")
    if config.get("classifier_free", False):
        names.add("conditional")
    if config.get("attribute_pairs"):
        names |= {"shape_classifier", "colour_classifier"}
    return [k for k in MODEL_KINDS if k in names]


def equal_nfe_budget(config: ml_collections.ConfigDict) -> int:
    """The NFE per chain of the costliest MCMC row (what ``reverse_equal`` spends)."""
    schedule = config.models.energy.schedule
    equal = common.equal_nfe(config.rows, schedule.name, schedule.num_levels)
    return equal.nfe if equal else 0


class _Dataset:
    """What every cell of one dataset needs: models, classifiers, real features."""

    def __init__(self, name: str, config: ml_collections.ConfigDict, workdir: str):
        self.name, self.config, self.workdir = name, config, workdir
        data = config.models.energy.data
        source = image_data.ImageSource.from_config(data, split="test")
        self.image_shape = source.image_shape
        self.models = {k: loading.load_model(os.path.join(workdir, "models", k))
                       for k in ("eps", "energy", "eps_equal", "conditional")
                       if k in needed_models(config)}
        _, module, params = _load(workdir, "classifier")
        self.classifier = Classifier.from_module(module, params, name=f"{name} classifier")
        self.attribute_classifiers = {
            k: Classifier.from_module(*_load(workdir, f"{k}_classifier")[1:],
                                      name=f"{name} {k} classifier")
            for k in ("shape", "colour") if f"{k}_classifier" in needed_models(config)}
        _, self.judge_module, self.judge_params = _load(workdir, "judge")
        self.num_classes = self.classifier.num_classes
        real, real_labels = real_images(source.source, config.num_real)
        probs, self.real_features = judge(self.judge_module, self.judge_params, real)
        self.judge_accuracy = float(np.mean(np.argmax(probs, -1) == real_labels))
        self.labels = asked_classes(config, self.num_classes)
        self.budget = equal_nfe_budget(config)  # reverse_equal's NFE

    def score(self, x: np.ndarray, labels: np.ndarray | None = None) -> dict:
        probs, feats = judge(self.judge_module, self.judge_params, x)
        pr = image_metrics.precision_recall(self.real_features, feats)
        noise = noise_images.is_noise(image_data.to_uint8(x, self.image_shape))
        hits = correct(probs, self.labels if labels is None else labels) & ~noise  # noise: wrong
        return {"accuracy": float(hits.mean()), "correct": hits.astype(int).tolist(),
                "noise": int(noise.sum()),
                "frechet": image_metrics.frechet_distance(self.real_features, feats),
                "precision": pr[0], "recall": pr[1]}


def _sample(target: Density, sampler: samplers.Sampler, schedule, key: Array, num: int):
    x, stats = samplers.sample(target, sampler, schedule, key, num, mesh=None)
    return np.asarray(x), stats


def _sample_per_class(ds: _Dataset, model: DiffusionModel, sampler, scale: float, key: Array,
                      schedule=None) -> tuple[np.ndarray, Any]:
    """SMC resamples across chains, so each class runs as its own population (the
    driver's ``populations``) of ``smc_population`` chains or the most-asked class's count
    if larger, as many classes per call as keep a call near a plain row's size; a class's
    images are the first of its population's (equally weighted, after the final
    resampling) chains."""
    classes, counts = np.unique(ds.labels, return_counts=True)
    size = max(int(counts.max()), ds.config.smc_population)
    per_call = max(1, len(ds.labels) // size)
    x = np.zeros((len(ds.labels), model.dim), np.float32)
    stats = None
    for start in range(0, len(classes), per_call):
        block = classes[start:start + per_call]
        target = guided(model, ds.classifier, jnp.asarray(np.repeat(block, size), jnp.int32),
                        scale)
        chains, stats = samplers.sample(target, sampler, schedule or model.schedule,
                                        jax.random.fold_in(key, start), len(block) * size,
                                        mesh=None, populations=len(block))
        chains = np.asarray(chains).reshape(len(block), size, model.dim)
        for i, c in enumerate(block):
            rows = np.flatnonzero(ds.labels == c)
            x[rows] = chains[i, :rows.size]
    return x, stats


def image_cell(ds: _Dataset, spec: ml_collections.ConfigDict, model_name: str, scale: float,
               key: Array, save: bool = True) -> dict:
    label = common.row_label(spec)
    sampler = common.make_sampler(spec, ds.budget)
    base = {"dataset": ds.name, "model": model_name, "sampler": label, "scale": scale,
            "kernel_steps": sampler.num_kernel_steps}
    model, schedule = ds.models[model_name], None
    if sampler.name == common.EQUAL:
        model = ds.models["eps_equal"]
        schedule = model.schedule
    reason = common.log_density_reason(sampler, model.has_log_prob, model_name)
    if reason:
        return {**base, "status": "n/a", "reason": reason}
    t0 = time.time()
    if sampler.resample_ess > 0:
        x, stats = _sample_per_class(ds, model, sampler, scale, key, schedule)
        base["population"] = max(int(np.unique(ds.labels, return_counts=True)[1].max()),
                                 ds.config.smc_population)
    else:
        target = guided(model, ds.classifier, jnp.asarray(ds.labels, jnp.int32), scale)
        x, stats = _sample(target, sampler, schedule or model.schedule, key, len(ds.labels))
    seconds = time.time() - t0
    row = {**base, **ds.score(x), "nfe": int(stats.nfe), "seconds": seconds,
           "diverged": int(stats.diverged)}
    if save:
        _save(ds, x, f"{model_name}_{label}")
    logging.info("%s %-6s %-10s scale %.1f accuracy %.3f frechet %.2f nfe %d %.1fs", ds.name,
                 model_name, label, scale, row["accuracy"], row["frechet"], row["nfe"], seconds)
    return row


def classifier_free_cell(ds: _Dataset, scale: float, key: Array) -> dict:
    model = ds.models["conditional"]
    t0 = time.time()
    x, stats = _sample(classifier_free(model, ds.labels, ds.num_classes, scale),
                       samplers.get("reverse"), model.schedule, key, len(ds.labels))
    row = {"dataset": ds.name, "model": "conditional eps", "sampler": "cfg", "scale": scale,
           "kernel_steps": 0, **ds.score(x), "nfe": int(stats.nfe), "seconds": time.time() - t0,
           "diverged": int(stats.diverged)}
    _save(ds, x, "conditional_cfg")
    return row


def attribute_pair_cell(ds: _Dataset, spec: ml_collections.ConfigDict, guidance: str,
                        key: Array) -> dict:
    """The held-out pairs asked of the energy model (trained without them), guided either
    by the shape and colour classifiers together or by the joint classifier (whose training
    data lacks those pairs too); judged by the judge, which saw all pairs."""
    cfg = ds.config.attribute_pairs
    pairs = [scene_classes.class_label(s, c) for s, c in cfg.pairs]
    labels = np.asarray(pairs)[requested_classes(cfg.num_images, len(pairs))]
    model, scale = ds.models["energy"], ds.config.scale
    if guidance == "attributes":
        shapes, colours = np.divmod(labels, len(scene_classes.COLOURS))
        target = attribute_guided(model, ds.attribute_classifiers["shape"],
                                  ds.attribute_classifiers["colour"], jnp.asarray(shapes),
                                  jnp.asarray(colours), scale)
        name = "energy + shape, colour classifiers"
    else:
        target = guided(model, ds.classifier, jnp.asarray(labels, jnp.int32), scale)
        name = "energy + joint classifier"
    t0 = time.time()
    x, stats = _sample(target, common.make_sampler(spec), model.schedule, key, len(labels))
    label = common.row_label(spec)
    row = {"dataset": f"{ds.name} held-out pairs", "model": name, "sampler": label,
           "scale": scale, **ds.score(x, labels), "num_images": len(labels),
           "nfe": int(stats.nfe),
           "seconds": time.time() - t0, "diverged": int(stats.diverged)}
    _save(ds, x, f"heldout_{guidance}_{label}", labels)
    logging.info("%s %s %s accuracy %.3f", row["dataset"], name, row["sampler"], row["accuracy"])
    return row


def _save(ds: _Dataset, x: np.ndarray, name: str, labels: np.ndarray | None = None) -> None:
    labels = ds.labels if labels is None else labels
    images = image_data.to_uint8(x, ds.image_shape)
    os.makedirs(os.path.join(ds.workdir, "samples"), exist_ok=True)
    image_metrics.write_adm_npz(os.path.join(ds.workdir, "samples", f"{name}.npz"), images,
                                labels=labels)
    classes = np.unique(labels)
    per_class = max(1, min(8, len(labels) // len(classes)))
    order = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes])
    image_grids.save_grid(images[order], os.path.join(
        os.path.dirname(ds.workdir), "figures", f"{ds.name}_{name}.png"), ncols=per_class)


def run_dataset(name: str, config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Every row of one dataset, plus accuracy against the guidance scale."""
    train_seconds = common.train_models(
        {f"models/{kind}": config.models[kind] for kind in needed_models(config)}, workdir)
    ds = _Dataset(name, config, workdir)
    logging.info("guidance_table: %s judge accuracy on held-out images %.3f", name,
                 ds.judge_accuracy)
    key = jax.random.key(config.seed)

    def cell_key(scale: float) -> Array:  # one key per scale: the rows' samples are paired
        return jax.random.fold_in(key, 1000 + int(10 * scale))

    rows = []
    for spec in config.rows:
        for model_name in spec.models:
            rows.append(image_cell(ds, spec, model_name, config.scale, cell_key(config.scale)))
    if config.get("classifier_free", False):
        rows.append(classifier_free_cell(ds, config.scale, cell_key(config.scale)))
    for spec in config.get("attribute_pairs", {}).get("rows", []):
        for guidance in ("attributes", "joint"):
            rows.append(attribute_pair_cell(ds, spec, guidance, jax.random.fold_in(key, 200)))
    curve = []
    for spec in config.scale_curve.rows:
        for scale in sorted({*config.scale_curve.scales, config.scale}):
            for model_name in spec.models:
                main = [r for r in rows if scale == config.scale and r["dataset"] == name
                        and (r["model"], r["sampler"]) == (model_name,
                                                           common.row_label(spec))]
                row = main[0] if main else image_cell(ds, spec, model_name, scale,
                                                      cell_key(scale), save=False)
                curve.append({k: row[k] for k in ("model", "sampler", "scale", "accuracy",
                                                  "frechet") if k in row})
    return {"rows": rows, "scale_curve": curve, "judge_accuracy": ds.judge_accuracy,
            "train_seconds": train_seconds}


# --- the oracle rows -------------------------------------------------------------------
def oracle_mixture(config: ml_collections.ConfigDict) -> GaussianMixture:
    schedule = schedules.get(config.schedule, config.num_levels)
    return gaussian_mixture(np.asarray(config.means, np.float32), config.std, schedule,
                            name="oracle")


def mmd_floor(grid: exact.GridTarget, reference: np.ndarray, key: Array,
              repeats: int = 5) -> float:
    """The noise of the unbiased MMD^2 estimator at this sample size: the root mean square
    of MMD^2 between ``reference`` and fresh exact samples (a mean of the signed values
    would be about 0, and a single one can be negative)."""
    values = [metrics.mmd(reference, np.asarray(grid.sample(k, len(reference))))
              for k in jax.random.split(key, repeats)]
    return float(np.sqrt(np.mean(np.square(values))))


def oracle_rows(config: ml_collections.ConfigDict, seed: int) -> list[dict]:
    """Guidance of a Gaussian mixture by its exact component posterior: sampler error alone."""
    gmm = oracle_mixture(config)
    posterior = gmm.component_classifier()
    key = jax.random.key(seed)
    rows = []
    for scale in config.scales:
        target = gmm * posterior.given(config.component) ** scale
        grid = exact.on_grid(target, t=0, extent=config.extent, size=config.grid_size)
        k_ref, k_floor = jax.random.split(jax.random.fold_in(key, int(10 * scale)))
        reference = np.asarray(grid.sample(k_ref, config.num_samples))
        floor = mmd_floor(grid, reference, k_floor)
        cell_key = jax.random.fold_in(key, 10_000 + int(10 * scale))  # paired rows
        for spec in config.rows:
            sampler, label = common.make_sampler(spec), common.row_label(spec)
            t0 = time.time()
            x, stats = _sample(target, sampler, gmm.schedule, cell_key, config.num_samples)
            k_post = np.exp(np.asarray(posterior.log_probs(jnp.asarray(x), 0)))[
                :, config.component]
            rows.append({"dataset": "oracle", "model": "exact", "sampler": label,
                         "scale": float(scale), "mmd": metrics.mmd(x, reference),
                         "mmd_floor": floor, "accuracy": float(np.mean(k_post > 0.5)),
                         "nfe": int(stats.nfe), "seconds": time.time() - t0,
                         "diverged": int(stats.diverged)})
            logging.info("oracle scale %.1f %-10s mmd %.4f (floor %.4f) accuracy %.3f",
                         scale, label, rows[-1]["mmd"], floor, rows[-1]["accuracy"])
    return rows


# --- the table -------------------------------------------------------------------------
def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The oracle rows, then every dataset's rows and scale curve."""
    workdir = os.path.abspath(workdir)
    os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
    result: dict[str, Any] = {"rows": [], "scale_curve": [], "judge_accuracy": {},
                              "train_seconds": {}}
    if config.get("oracle"):
        result["rows"] += oracle_rows(config.oracle, config.seed)
    for name in config.datasets:
        sub = config.dataset_configs[name]
        for model in sub.models.values():
            model.data.data_dir = config.data_dir
        out = run_dataset(name, sub, os.path.join(workdir, name))
        result["rows"] += out["rows"]
        result["scale_curve"] += [{"dataset": name, **c} for c in out["scale_curve"]]
        result["judge_accuracy"][name] = out["judge_accuracy"]
        result["train_seconds"][name] = out["train_seconds"]
    result["classifier_accuracy"] = result["judge_accuracy"]
    if result["scale_curve"]:
        _scale_figure(result["scale_curve"], os.path.join(workdir, "figures",
                                                          "accuracy_vs_scale.png"))
    return result


def _scale_figure(curve: list[dict], path: str) -> None:
    plt = plots.pyplot()

    datasets = list(dict.fromkeys(c["dataset"] for c in curve))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        points = [c for c in curve if c["dataset"] == name and "accuracy" in c]
        for key in dict.fromkeys((c["model"], c["sampler"]) for c in points):
            pts = sorted((c["scale"], c["accuracy"]) for c in points
                         if (c["model"], c["sampler"]) == key)
            ax.plot(*zip(*pts), marker="o", label=" ".join(key))
        ax.set_title(name)
        ax.set_xlabel("guidance scale")
        ax.set_ylabel("accuracy (judge p > 0.5)")
        ax.legend(fontsize=7)
    common.save_figure(fig, path)


def claims(result: dict) -> list[dict]:
    """RRR's claim per dataset on paired per-image outcomes: the best MCMC row on the energy
    model beats the best reverse-diffusion row (the Frechet distances beside it); and, on
    the held-out pairs, composed attribute classifiers beat the joint one."""
    out = []
    for name in dict.fromkeys(r["dataset"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["dataset"] == name and "correct" in r]
        if name == "oracle":
            continue
        if name.endswith(" held-out pairs"):
            out += _held_out_claims(name, rows)
            continue
        reverse = [r for r in rows if r["kernel_steps"] == 0 and r["model"] != "conditional eps"]
        mcmc = [r for r in rows if r["model"] == "energy" and r["kernel_steps"] > 0]
        if not reverse or not mcmc:
            continue
        best = max(mcmc, key=lambda r: r["accuracy"])
        rev = max(reverse, key=lambda r: r["accuracy"])
        claim = paired.compare(f"{name}: MCMC on the energy model beats reverse diffusion",
                               f"energy {best['sampler']}", best["correct"],
                               f"{rev['model']} {rev['sampler']}", rev["correct"], binary=True)
        frechet = ("without hurting the Frechet distance" if best["frechet"] <= rev["frechet"]
                   else "but with a larger Frechet distance")
        claim["text"] += (f" Frechet {best['frechet']:.2f} against {rev['frechet']:.2f}: "
                          f"{frechet}.")
        out.append(claim)
    return out


def _held_out_claims(name: str, rows: list[dict]) -> list[dict]:
    """Composed attribute classifiers against the joint one, on pairs neither model saw."""
    out = []
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        by = {r["model"].split(" + ")[1]: r for r in rows if r["sampler"] == sampler}
        if len(by) != 2:
            continue
        composed, joint = by["shape, colour classifiers"], by["joint classifier"]
        out.append(paired.compare(
            f"{name}, {sampler}: composing the shape and colour classifiers beats the joint "
            "classifier on pairs the generator never saw", "composed", composed["correct"],
            "joint", joint["correct"], binary=True))
    return out


def oracle_notes(result: dict) -> list[str]:
    """The oracle check: which samplers come within 3x the exact-vs-exact MMD floor."""
    rows = [r for r in result["rows"] if r["dataset"] == "oracle" and "mmd" in r]
    lines = []
    for scale in sorted({r["scale"] for r in rows}):
        ok = [r["sampler"] for r in rows if r["scale"] == scale and r["mmd"] <= 3 * r["mmd_floor"]]
        lines.append(f"Oracle, scale {scale:g}: within 3x the exact-vs-exact MMD floor: "
                     + (", ".join(ok) if ok else "none") + ".")
    return lines


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _noise(row: dict) -> str:
    """Noise images of a row (:mod:`compdiff.evaluation.noise_images`), of its images."""
    return f"{row['noise']}/{len(row['correct'])}" if "noise" in row else "-"


def markdown(result: dict) -> str:
    lines = ["| dataset | model | sampler | scale | accuracy | Frechet (judge features) | "
             "precision | recall | MMD (floor) | noise | NFE | seconds |", "|---" * 12 + "|"]
    for r in result["rows"]:
        if r.get("status") == "n/a":
            continue
        mmd = f"{r['mmd']:.4f} ({r['mmd_floor']:.4f})" if "mmd" in r else "-"
        lines.append(f"| {r['dataset']} | {r['model']} | {r['sampler']} | {r['scale']:g} | "
                     f"{r['accuracy']:.2f} | {_fmt(r.get('frechet'), '.2f')} | "
                     f"{_fmt(r.get('precision'), '.2f')} | {_fmt(r.get('recall'), '.2f')} | "
                     f"{mmd} | {_noise(r)} | {r['nfe']} | {r['seconds']:.0f} |")
    lines += [""] + oracle_notes(result)
    lines.append("\nJudge (clean classifier) accuracy on held-out images: " + ", ".join(
        f"{k} {v:.3f}" for k, v in result["judge_accuracy"].items()) + ".")
    if result.get("scale_curve"):
        lines.append("\nAccuracy against guidance scale: " + "; ".join(
            f"{c['dataset']} {c['model']} {c['sampler']} {c['scale']:g}: {c['accuracy']:.2f}"
            for c in result["scale_curve"] if "accuracy" in c) + ".")
    return "\n".join(lines) + "\n"
