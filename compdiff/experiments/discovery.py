"""Du & Kaelbling (2024) Fig. 14: discovering components from unlabelled data.

Data. scikit-learn's 8x8 digits (:mod:`compdiff.data.digits`, the ``train`` split of its
fixed stratified split), restricted to ``classes``, each scan flattened to ``x in R^64``
with grey levels mapped to ``[-1, 1]``. The labels are hidden from training; they are used
only to score the discovered components.

Model. A mixture of ``K`` diffusion models, ``p(x) = sum_k pi_k p_k(x)``, each ``p_k`` a
residual MLP (:class:`compdiff.models.ResidualMLP`, ``train.model``'s parameterization) on
the schedule ``schedule``. Fitted by (generalized) EM:

* E-step. For a diffusion model ``log p_k`` has no closed form; the ELBO gives, up to the
  prior and decoder terms ``L_T`` and ``L_0`` (taken as equal across components),

      -log p_k(x_0) <= sum_{t=2}^T w_t E_eps ||eps - eps_hat_k(x_t, t)||^2 + C,
      w_t = beta_t / (2 alpha_t sigma_{t-1}^2),   x_t = sqrt(abar_t) x_0 + sigma_t eps

  (DDPM's ``L_{t-1}`` for the eps form; ``sigma_{t-1}^2 = 1 - abar_{t-1}``). We estimate it
  on a fixed grid ``S`` of ``estep.num_levels`` levels evenly spaced in ``2..T`` and
  ``estep.draws`` noise draws per level, ``N_k(x) = (T - 1) / |S| sum_{t in S}
  w_t mean_m ||eps_m - eps_hat_k(x_t^m, t)||^2`` (``estep.weighting = "uniform"`` drops
  ``w_t``: the plain denoising loss averaged over ``S``). The draws ``eps_m`` are the same
  for every component, so ``N_k(x) - N_j(x)`` is a paired difference and the noise shared
  by the components cancels. For an energy or eps model ``eps_hat_k = -sigma_t
  score_k``; for an exact density (a test oracle) the same formula uses its exact score.
  With ``estep.cross_fit`` the examples are split in two folds, each cluster has one
  network per fold trained on that fold's examples only, and an example is scored by the
  other fold's networks: a component cannot favour the examples it memorized.
  The responsibilities are the posterior under ``log p_k ~ -N_k``, tempered:

      r_k(x) = softmax_k(log pi_k - N_k(x) / temperature).

  ``temperature = 1`` is the EM posterior of the ELBO estimate; in 64 dimensions it is
  nearly hard, and a larger temperature keeps the early rounds soft.
* M-step. ``pi_k = mean_x r_k(x)``, and each component is trained ``steps_per_round`` steps
  further (warm-started; one vmapped Adam step trains all ``K``) on the denoising loss of
  minibatches *resampled* from ``r_k``: example ``i`` is drawn with probability ``r_k(x_i) /
  sum_j r_k(x_j)``. In expectation this is the responsibility-weighted loss ``sum_i r_k(x_i)
  L(x_i) / sum_i r_k(x_i)``; we resample rather than weight because it gives every
  component a full minibatch of its own examples (a shared uniform batch weighted by
  ``r_k`` would give a component holding 1/K of the data ~B/K effective examples).

Initialization (``init``): ``kmeans++`` picks ``K`` centres by k-means++ (D^2) seeding
(``kmeans``: the centres of a fitted k-means, to ask whether EM keeps or improves them) and
sets ``r_k(x) = softmax_k(-||x - c_k||^2 / (init_temperature * median distance^2))``;
``random`` draws each ``r(x)`` from a flat Dirichlet. Round 0 of the curve scores the
initial assignment, so what EM adds over its start is visible.

Scores (per round and seed): purity and NMI of the hard assignment ``argmax_k r_k(x)``
against the hidden classes; baseline k-means (scikit-learn, ``n_init=10``) on the same
pixels with the same seeds. Claims (bootstrap over examples, paired: every resample scores
all methods on the same examples, averaged over seeds): final NMI above the NMI of a random
assignment with the same cluster sizes (a permutation of the discovered one), and the
NMI difference against k-means.

Samples: reverse diffusion of each discovered component (``figures/component_<k>.png``)
and of the mixture ``(p_a + p_b) / 2`` of the two largest components (``figures/
composed.png``; :func:`compdiff.compose.mixture` needs log-densities, so an energy
parameterization).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from compdiff import compose, plots, samplers, schedules
from compdiff.compose import Density
from compdiff.data import digits
from compdiff.data.pixels import to_uint8
from compdiff.experiments import common, paired
from compdiff.image_grids import save_grid
from compdiff.models.diffusion import DiffusionModel, LinenApply, is_energy
from compdiff.schedules import Schedule
from compdiff.training import tasks

Array = jax.Array
IMAGE_SHAPE = (8, 8, 1)
INITS = ("kmeans++", "kmeans", "random")
WEIGHTINGS = ("elbo", "uniform")


# --- configuration and data -------------------------------------------------------------------
def check_config(config: ml_collections.ConfigDict) -> None:
    """One ValueError naming the first bad field."""
    classes = tuple(config.classes)
    if len(classes) < 2 or len(set(classes)) != len(classes) or any(
            not 0 <= c < digits.NUM_CLASSES for c in classes):
        raise ValueError(f"classes must be >= 2 distinct digits in 0..9, got {classes}")
    if config.num_components < 2:
        raise ValueError(f"num_components must be >= 2, got {config.num_components}")
    if not config.seeds:
        raise ValueError("seeds is empty: the bands and claims need at least one seed")
    if config.init not in INITS:
        raise ValueError(f"unknown init {config.init!r}; known: {list(INITS)}")
    if config.estep.weighting not in WEIGHTINGS:
        raise ValueError(f"unknown estep.weighting {config.estep.weighting!r}; known: "
                         f"{list(WEIGHTINGS)}")
    if config.estep.cross_fit and config.max_per_class == 1:
        raise ValueError("estep.cross_fit splits the examples in two folds: max_per_class "
                         "must be 0 or >= 2")
    if not config.temperature > 0:
        raise ValueError(f"temperature must be > 0, got {config.temperature}")
    if config.rounds < 1 or config.steps_per_round < 1:
        raise ValueError(f"rounds and steps_per_round must be >= 1, got {config.rounds}, "
                         f"{config.steps_per_round}")
    if not is_energy(config.train.model.parameterization):
        raise ValueError("the composed sample set is a mixture, which needs log-densities: "
                         "train.model.parameterization must be an energy form, got "
                         f"{config.train.model.parameterization!r}")


def pixels(classes: Sequence[int], max_per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x [n, 64] in [-1, 1], labels [n])``: the train split's scans of ``classes``
    (the first ``max_per_class`` of each when > 0)."""
    images, labels = digits.scans()
    rows = digits.split_indices(labels)["train"]
    keep = []
    for c in classes:
        r = rows[labels[rows] == c]
        keep.append(r[:max_per_class] if max_per_class > 0 else r)
    keep = np.sort(np.concatenate(keep))
    x = images[keep].reshape(len(keep), -1).astype(np.float32) / 127.5 - 1.0
    return x, labels[keep]


# --- E-step -----------------------------------------------------------------------------------
def estep_levels(schedule: Schedule, num_levels: int, min_level: int = 2) -> np.ndarray:
    """``num_levels`` distinct levels evenly spaced in ``min_level..T`` (``min_level >= 2``)."""
    top = schedule.num_levels
    if not 2 <= min_level <= top:
        raise ValueError(f"estep.min_level must be in 2..{top} (the ELBO terms start at 2), "
                         f"got {min_level}")
    return np.unique(np.round(np.linspace(min_level, top, num_levels)).astype(int))


def level_weights(schedule: Schedule, levels: np.ndarray, weighting: str) -> np.ndarray:
    """Per-level weights of the stratified ELBO estimate, ``(T - 1) / |S| w_t`` (``elbo``),
    or ``1 / |S|`` (``uniform``)."""
    levels = np.asarray(levels)
    if weighting == "uniform":
        return np.full(len(levels), 1.0 / len(levels))
    beta, alpha = np.asarray(schedule.beta), np.asarray(schedule.alpha)
    sigma_prev2 = np.asarray(schedule.sigma)[levels - 1] ** 2
    w = beta[levels] / (2 * alpha[levels] * sigma_prev2)
    return (schedule.num_levels - 1) / len(levels) * w


@jax.jit
def _eps_error(density: Density, x_t: Array, t: Array, eps: Array, sigma: Array) -> Array:
    eps_hat = -sigma * density.score(x_t, t)
    return jnp.sum((eps - eps_hat) ** 2, axis=-1)


def denoising_nll(densities: Sequence[Density], x0: np.ndarray, schedule: Schedule,
                  levels: np.ndarray, weights: np.ndarray, draws: int, key: Array
                  ) -> np.ndarray:
    """``N [K, n]``: each density's ELBO estimate of ``-log p_k(x0)`` (module docstring),
    with the same levels and noise draws ``eps`` for every component (paired)."""
    x0 = jnp.asarray(x0, jnp.float32)
    out = np.zeros((len(densities), x0.shape[0]))
    for i, (t, w) in enumerate(zip(levels, weights)):
        sigma = schedule.sigma[int(t)]
        for m in range(draws):
            eps = jax.random.normal(jax.random.fold_in(key, i * draws + m), x0.shape)
            x_t = jnp.sqrt(schedule.abar[int(t)]) * x0 + sigma * eps
            for k, density in enumerate(densities):
                err = _eps_error(density, x_t, jnp.asarray(int(t), jnp.int32), eps, sigma)
                out[k] += w / draws * np.asarray(err, np.float64)
    return out


def responsibilities(nll: np.ndarray, log_weights: np.ndarray, temperature: float
                     ) -> np.ndarray:
    """``r [n, K] = softmax_k(log pi_k - N_k(x) / temperature)``; rows sum to one."""
    logits = np.asarray(log_weights)[None, :] - np.asarray(nll).T / temperature
    logits -= logits.max(axis=1, keepdims=True)
    r = np.exp(logits)
    return r / r.sum(axis=1, keepdims=True)


# --- initialization, scores -------------------------------------------------------------------
def initial_responsibilities(x: np.ndarray, k: int, init: str, temperature: float,
                             rng: np.random.Generator) -> np.ndarray:
    """Soft ``[n, K]`` start: k-means++ seeds (or fitted k-means centres) with a softmax on
    squared distances, or flat-Dirichlet rows (module docstring)."""
    if init == "random":
        return rng.dirichlet(np.ones(k), size=len(x))
    if init == "kmeans":
        seed = int(rng.integers(2**31))
        centres = list(KMeans(k, n_init=10, random_state=seed).fit(x).cluster_centers_)
    else:
        centres = [x[rng.integers(len(x))]]
        for _ in range(k - 1):
            d2 = np.min([np.sum((x - c) ** 2, 1) for c in centres], axis=0)
            centres.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    d2 = np.stack([np.sum((x - c) ** 2, 1) for c in centres], 1)
    scale = temperature * float(np.median(d2))
    logits = -(d2 - d2.min(1, keepdims=True)) / scale
    r = np.exp(logits)
    return r / r.sum(1, keepdims=True)


def purity(labels: np.ndarray, assign: np.ndarray) -> float:
    """``sum_k max_c |{i: assign_i = k, label_i = c}| / n``."""
    total = 0
    for k in np.unique(assign):
        total += np.bincount(labels[assign == k]).max()
    return float(total / len(labels))


def nmi(labels: np.ndarray, assign: np.ndarray) -> float:
    return float(normalized_mutual_info_score(labels, assign))


def nmi_bootstrap(claim: str, labels: np.ndarray, a: Sequence[np.ndarray], a_label: str,
                  b: Sequence[np.ndarray], b_label: str, num: int = paired.BOOTSTRAP,
                  seed: int = 0) -> dict:
    """Claim "A's NMI exceeds B's": per resample of the examples (the same for every seed
    and method), the mean over seeds of ``NMI(a_s) - NMI(b_s)``; percentile interval and
    the two-sided bootstrap p-value of :func:`paired.paired_bootstrap`."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    estimate = float(np.mean([nmi(labels, x) - nmi(labels, y) for x, y in zip(a, b)]))
    diffs = np.empty(num)
    for j in range(num):
        idx = rng.integers(0, n, n)
        diffs[j] = np.mean([nmi(labels[idx], x[idx]) - nmi(labels[idx], y[idx])
                            for x, y in zip(a, b)])
    low, high = np.quantile(diffs, [0.025, 0.975])
    p = float(min(1.0, 2 * min((np.sum(diffs <= 0) + 1) / (num + 1),
                               (np.sum(diffs >= 0) + 1) / (num + 1))))
    result = paired.verdict(estimate, p)
    text = (f"{claim}: {result} ({a_label} - {b_label} NMI = {estimate:+.3f}, 95% bootstrap "
            f"interval over examples [{low:+.3f}, {high:+.3f}], p = {p:.3g}, {n} examples, "
            f"{len(a)} seeds).")
    return {"claim": claim, "a": a_label, "b": b_label, "estimate": estimate,
            "interval": [float(low), float(high)], "p_value": p,
            "test": "bootstrap over examples (mean over seeds)", "num_pairs": n,
            "verdict": result, "text": text}


# --- M-step -----------------------------------------------------------------------------------
class Components:
    """``K`` diffusion models with stacked parameters, trained together by one vmapped step."""

    def __init__(self, train: ml_collections.ConfigDict, schedule: Schedule, dim: int, k: int,
                 key: Array):
        self.module = tasks.network(train, dim)
        self.apply_fn = LinenApply(self.module)
        self.schedule, self.dim = schedule, dim
        self.parameterization = train.model.parameterization
        x, t = jnp.zeros((1, dim)), jnp.ones((1,), jnp.int32)
        self.params = jax.vmap(lambda kk: self.module.init(kk, x, t)["params"])(
            jax.random.split(key, k))
        self.optimizer = optax.chain(optax.clip_by_global_norm(train.train.grad_clip),
                                     optax.adam(train.train.lr))
        self.opt_state = jax.vmap(self.optimizer.init)(self.params)
        self.batch_size = train.train.batch_size
        self._step = jax.jit(self._steps, static_argnums=(4,))

    def _steps(self, params, opt_state, x, logits, num_steps: int, key):
        def one(carry, step_key):
            params, opt_state = carry
            keys = jax.random.split(step_key, logits.shape[0])

            def update(p, s, lg, kk):
                k_idx, k_loss = jax.random.split(kk)
                idx = jax.random.categorical(k_idx, lg, shape=(self.batch_size,))
                loss, grads = jax.value_and_grad(tasks.loss_fn)(
                    p, self.apply_fn, self.parameterization, self.schedule, x[idx], k_loss)
                updates, s = self.optimizer.update(grads, s, p)
                return optax.apply_updates(p, updates), s, loss

            params, opt_state, loss = jax.vmap(update)(params, opt_state, logits, keys)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(one, (params, opt_state),
                                                   jax.random.split(key, num_steps))
        return params, opt_state, losses

    def train(self, x: np.ndarray, resp: np.ndarray, steps: int, key: Array) -> np.ndarray:
        """``steps`` steps of every component on minibatches resampled from ``resp [n, K]``;
        returns the last step's loss per component."""
        logits = jnp.log(jnp.maximum(jnp.asarray(resp.T, jnp.float32), 1e-30))
        self.params, self.opt_state, losses = self._step(
            self.params, self.opt_state, jnp.asarray(x), logits, steps, key)
        return np.asarray(losses[-1])

    def model(self, k: int) -> DiffusionModel:
        params = jax.tree_util.tree_map(lambda p: p[k], self.params)
        return DiffusionModel(apply_fn=self.apply_fn, params=params, schedule=self.schedule,
                              parameterization=self.parameterization, dim=self.dim,
                              name=f"component{k}")

    def models(self) -> list[DiffusionModel]:
        return [self.model(k) for k in range(len(jax.tree_util.tree_leaves(self.params)[0]))]


# --- the experiment ---------------------------------------------------------------------------
def discover(config: ml_collections.ConfigDict, x: np.ndarray, labels: np.ndarray, seed: int,
             schedule: Schedule) -> tuple[Components, list[dict], np.ndarray]:
    """EM for one seed: the components, one score row per round (round 0: the initial
    assignment) and the final responsibilities ``[n, K]``. ``labels`` only score."""
    k = config.num_components
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), seed)
    rng = np.random.default_rng([config.seed, seed])
    train = copy.deepcopy(config.train)
    train.schedule.num_levels = schedule.num_levels  # the network's time table
    folds = 2 if config.estep.cross_fit else 1
    fold = np.random.default_rng([config.seed, seed, 1]).permutation(len(x)) % folds
    comps = Components(train, schedule, x.shape[1], folds * k, jax.random.fold_in(key, 0))
    levels = estep_levels(schedule, config.estep.num_levels, config.estep.min_level)
    weights = level_weights(schedule, levels, config.estep.weighting)
    estep_key = jax.random.fold_in(key, 1)  # the same draws every round: paired rounds too
    resp = initial_responsibilities(x, k, config.init, config.init_temperature, rng)
    rows = []
    for rnd in range(config.rounds + 1):
        assign = resp.argmax(1)
        rows.append({"seed": seed, "round": rnd, "nmi": nmi(labels, assign),
                     "purity": purity(labels, assign),
                     "entropy": float(-np.sum(resp * np.log(np.maximum(resp, 1e-30)), 1).mean()),
                     "sizes": np.bincount(assign, minlength=k).tolist()})
        logging.info("discovery seed %d round %d: NMI %.3f purity %.3f entropy %.3f sizes %s",
                     seed, rnd, rows[-1]["nmi"], rows[-1]["purity"], rows[-1]["entropy"],
                     rows[-1]["sizes"])
        if rnd == config.rounds:
            break
        log_pi = np.log(np.maximum(resp.mean(0), 1e-12))
        # component f * k + j: cluster j trained on fold f's examples only
        per_fold = np.concatenate([resp * (fold == f)[:, None] for f in range(folds)], 1)
        rows[-1]["loss"] = comps.train(x, per_fold, config.steps_per_round,
                                       jax.random.fold_in(key, 100 + rnd)).tolist()
        nll = denoising_nll(comps.models(), x, schedule, levels, weights, config.estep.draws,
                            estep_key).reshape(folds, k, len(x))
        # cross-fitted: an example in fold f is scored by the other fold's components
        nll = np.take_along_axis(nll, ((fold + folds - 1) % folds)[None, None, :], 0)[0]
        resp = responsibilities(nll, log_pi, config.temperature)
    return comps, rows, resp


def _samples(config, comps: Components, resp: np.ndarray, workdir: str, seed: int) -> dict:
    """Reverse-diffusion grids of every component and of the mixture of the two largest."""
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 10_000 + seed)
    reverse, paths = samplers.get("reverse"), {}
    fig_dir = os.path.join(workdir, "figures")
    models = comps.models()[:resp.shape[1]]  # (fold 0's, when cross-fitted)
    for k, model in enumerate(models):
        x, _ = samplers.sample(model, reverse, comps.schedule, key, config.num_samples,
                               mesh=None)
        paths[f"component_{k}"] = save_grid(to_uint8(np.asarray(x), IMAGE_SHAPE),
                                            os.path.join(fig_dir, f"component_{k}.png"))
    a, b = np.argsort(-resp.sum(0))[:2]
    mix = compose.mixture([models[a], models[b]])
    x, _ = samplers.sample(mix, reverse, comps.schedule, key, config.num_samples, mesh=None)
    paths["composed"] = save_grid(to_uint8(np.asarray(x), IMAGE_SHAPE),
                                  os.path.join(fig_dir, "composed.png"))
    return {"paths": paths, "composed_of": [int(a), int(b)]}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    check_config(config)
    schedule = schedules.get(config.schedule.name, config.schedule.num_levels)
    x, labels = pixels(config.classes, config.max_per_class)
    start = time.time()
    rows, finals, kmeans_assign, samples = [], [], [], {}
    for seed in config.seeds:
        comps, seed_rows, resp = discover(config, x, labels, seed, schedule)
        rows += seed_rows
        finals.append(resp.argmax(1))
        km = KMeans(config.num_components, n_init=10, random_state=int(seed)).fit(x)
        kmeans_assign.append(km.labels_)
        if seed == config.seeds[0]:
            samples = _samples(config, comps, resp, workdir, seed)
    seconds = time.time() - start
    rng = np.random.default_rng(config.seed)
    chance = [rng.permutation(a) for a in finals]
    kmeans_rows = [{"seed": s, "nmi": nmi(labels, a), "purity": purity(labels, a)}
                   for s, a in zip(config.seeds, kmeans_assign)]
    curve_figure(os.path.join(workdir, "figures", "discovery_curve.png"), rows, kmeans_rows)
    claims = [
        nmi_bootstrap("discovered components match the classes better than chance", labels,
                      finals, "discovery", chance, "random (same sizes)", config.bootstrap),
        nmi_bootstrap("discovered components match the classes better than k-means", labels,
                      finals, "discovery", kmeans_assign, "k-means", config.bootstrap)]
    return {"rows": rows, "kmeans": kmeans_rows, "num_examples": int(len(x)),
            "chance_nmi": [nmi(labels, a) for a in chance], "samples": samples,
            "train_seconds": {"em": seconds}, "claims": claims}


def curve_figure(path: str, rows: list[dict], kmeans_rows: list[dict]) -> None:
    """NMI and purity against the EM round: mean over seeds, min-max band; k-means dashed."""
    plt = plots.pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    rounds = sorted({r["round"] for r in rows})
    for ax, metric in zip(axes, ("nmi", "purity")):
        vals = np.array([[r[metric] for r in rows if r["round"] == t] for t in rounds])
        ax.plot(rounds, vals.mean(1), "o-", label="diffusion EM")
        ax.fill_between(rounds, vals.min(1), vals.max(1), alpha=0.25)
        ax.axhline(np.mean([r[metric] for r in kmeans_rows]), color="k", ls="--",
                   label="k-means")
        ax.set_xlabel("EM round (0: initial assignment)")
        ax.set_ylabel(metric)
    axes[0].legend(fontsize=7)
    common.save_figure(fig, path)


def _mean_sd(values: Sequence[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def markdown(result: dict) -> str:
    """NMI and purity per round (mean ± sd over seeds), then k-means and chance."""
    lines = [f"{result['num_examples']} unlabelled examples.", "",
             "| method | round | NMI | purity |", "|---|---|---|---|"]
    rounds = sorted({r["round"] for r in result["rows"]})
    for t in rounds:
        rs = [r for r in result["rows"] if r["round"] == t]
        lines.append(f"| diffusion EM | {t} | {_mean_sd([r['nmi'] for r in rs])} | "
                     f"{_mean_sd([r['purity'] for r in rs])} |")
    km = result["kmeans"]
    lines.append(f"| k-means | - | {_mean_sd([r['nmi'] for r in km])} | "
                 f"{_mean_sd([r['purity'] for r in km])} |")
    lines.append(f"| random (same sizes) | - | {_mean_sd(result['chance_nmi'])} | - |")
    return "\n".join(lines) + "\n"
