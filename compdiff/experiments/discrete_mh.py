"""Discrete composition by Metropolis-Hastings with a learned proposal (Du & Kaelbling 2024,
section 5.3): TV to the exact composed target against the number of energy evaluations.

The space is ``{0, 1}^L`` (``2^L`` states, enumerated exactly). The composed target is

    p(x) ∝ q(x) exp(-E_1(x) - E_2(x)),
    log q(x)  = sum_i h_i x_i,  h_i = field * (2 i / (L - 1) - 1)     (a base tilted along x),
    E_1(x)    = count_weight * (|x| - count)^2                         ("about k ones"),
    E_2(x)    = adjacent_weight * #{i : x_i = x_(i+1) = 1}             ("no two adjacent ones").

Per seed: exact samples of the first factor ``p_1 ∝ q e^{-E_1}`` train a small autoregressive
model ``q_theta`` (:class:`compdiff.discrete.AutoregressiveBits`, maximum likelihood); then
``num_chains`` chains from uniform random strings run each method, one target evaluation
``log p~ = log q - E_1 - E_2`` per step (:mod:`compdiff.discrete`):

* ``mh_learned``: independence MH with proposal ``q_theta`` and the exact acceptance
  ``min(1, p~(x') q_theta(x) / (p~(x) q_theta(x')))`` (one ``q_theta`` draw per step too);
* ``mh_paper``: the paper's acceptance ``clip(e^{E_2(x) - E_2(x')})`` with the same learned
  proposal, i.e. exact MH for ``q_theta e^{-E_2}``: it converges to that, not to ``p``;
* ``mh_exact_factor``: the paper's setting with a perfect model, proposals from ``p_1``
  itself (a reference: what the learned proposal would reach if it were exact);
* ``gibbs``: systematic-scan single-site Gibbs with exact conditionals;
* ``local_flip``: Metropolis with single-bit flips.

The measure: after every ``record_every`` steps the chains' empirical distribution is compared
with the enumerated target, ``TV = 0.5 sum_x |emp(x) - p(x)|``. With ``C`` chains TV never
reaches 0: ``iid_tv`` is the TV of ``C`` exact samples, and the threshold is
``iid_tv + tv_margin``. Per seed, ``evals_to_threshold`` is the first evaluation count with TV
below it (censored at the budget when never reached: ``reached`` says which). Claims compare
methods by it over seeds (paired bootstrap over seeds, each seed its own trained proposal,
data and initial chains), and the two acceptances by their final TV.

Outputs: ``discrete_mh.json`` / ``.md`` (the protocol) and ``figures/tv_curves.png``.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from compdiff import discrete, plots
from compdiff.experiments import common, paired

Array = jnp.ndarray
METHODS = ("mh_learned", "mh_paper", "mh_exact_factor", "gibbs", "local_flip")


# --- the target -------------------------------------------------------------------------------
def _check(config: ml_collections.ConfigDict) -> None:
    t = config.target
    if not 2 <= t.length <= 20:
        raise ValueError(f"target.length must be in [2, 20] (2^L states are enumerated), "
                         f"got {t.length}")
    if not 0 <= t.count <= t.length:
        raise ValueError(f"target.count must be in [0, target.length], got {t.count}")
    unknown = set(config.methods) - set(METHODS)
    if unknown or not config.methods:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {list(METHODS)}")
    for name in ("num_chains", "num_records", "record_every", "num_seeds"):
        if int(config[name]) < 1:
            raise ValueError(f"{name} must be a positive integer, got {config[name]}")
    if not config.tv_margin > 0:
        raise ValueError(f"tv_margin must be positive, got {config.tv_margin}")


def base_log_prob(x: Array, target: ml_collections.ConfigDict) -> Array:
    """``log q(x) = sum_i h_i x_i`` with ``h`` a ramp from ``-field`` to ``+field``."""
    h = target.field * jnp.linspace(-1.0, 1.0, x.shape[-1])
    return x.astype(jnp.float32) @ h


def count_energy(x: Array, target: ml_collections.ConfigDict) -> Array:
    """``E_1(x) = count_weight (|x| - count)^2``."""
    return target.count_weight * (jnp.sum(x, -1).astype(jnp.float32) - target.count) ** 2


def adjacent_energy(x: Array, target: ml_collections.ConfigDict) -> Array:
    """``E_2(x) = adjacent_weight * (number of adjacent pairs of ones)``."""
    pairs = jnp.sum(x[:, 1:] * x[:, :-1], -1).astype(jnp.float32)
    return target.adjacent_weight * pairs


def factor_log_prob(x: Array, target: ml_collections.ConfigDict) -> Array:
    """``log p~_1 = log q - E_1``: the factor the proposal model learns."""
    return base_log_prob(x, target) - count_energy(x, target)


def composed_log_prob(x: Array, target: ml_collections.ConfigDict) -> Array:
    """``log p~ = log q - E_1 - E_2``: the composed target."""
    return factor_log_prob(x, target) - adjacent_energy(x, target)


# --- one seed ---------------------------------------------------------------------------------
def _categorical_sampler(log_p: Array, states: Array):
    """Exact draws from ``exp(log_p)`` over ``states`` by the inverse CDF."""
    cdf = jnp.cumsum(jax.nn.softmax(log_p))

    def sample(key: Array, num: int) -> Array:
        u = jax.random.uniform(key, (num,)) * cdf[-1]
        return states[jnp.minimum(jnp.searchsorted(cdf, u), states.shape[0] - 1)]

    return sample


def _kernels(config, model: discrete.AutoregressiveBits, states: Array, log_p1: Array):
    target = config.target
    log_target = lambda x: composed_log_prob(x, target)  # noqa: E731
    index_log_p1 = lambda x: log_p1[discrete.state_index(x)]  # noqa: E731
    paper_target = lambda x: model.log_prob(x) - adjacent_energy(x, target)  # noqa: E731
    return {
        "mh_learned": (log_target, discrete.independence_mh_kernel(
            log_target, model.sample, model.log_prob), model.log_prob),
        "mh_paper": (paper_target, discrete.independence_mh_kernel(
            paper_target, model.sample, model.log_prob), model.log_prob),
        "mh_exact_factor": (log_target, discrete.independence_mh_kernel(
            log_target, _categorical_sampler(log_p1, states), index_log_p1), index_log_p1),
        "gibbs": (log_target, discrete.gibbs_kernel(log_target), None),
        "local_flip": (log_target, discrete.local_flip_kernel(log_target), None),
    }


def run_seed(config: ml_collections.ConfigDict, seed: int) -> dict:
    """Trains the proposal on ``p_1`` samples and runs every method from one initial state."""
    target, length = config.target, config.target.length
    key = jax.random.PRNGKey(seed)
    k_data, k_fit, k_init, k_run, k_iid = jax.random.split(key, 5)
    states = discrete.all_states(length)
    log_p1 = jax.nn.log_softmax(factor_log_prob(states, target))
    p = discrete.exact_distribution(lambda x: composed_log_prob(x, target), length)

    t0 = time.time()
    data = _categorical_sampler(log_p1, states)(k_data, config.train.num_samples)
    model, losses = discrete.fit_autoregressive(
        k_fit, data, hidden=config.train.hidden, steps=config.train.steps,
        batch_size=config.train.batch_size, lr=config.train.lr)
    log_q = model.log_prob(states)
    paper_p = jax.nn.softmax(log_q - adjacent_energy(states, target))
    fit = {"seconds": time.time() - t0, "final_loss": float(jnp.mean(losses[-100:])),
           "entropy_p1": float(-jnp.sum(jnp.exp(log_p1) * log_p1)),
           "kl_p1_q": float(jnp.sum(jnp.exp(log_p1) * (log_p1 - log_q))),
           "tv_p1_q": float(0.5 * jnp.sum(jnp.abs(jnp.exp(log_p1) - jnp.exp(log_q)))),
           "tv_paper_target": float(0.5 * jnp.sum(jnp.abs(paper_p - p)))}

    iid = _categorical_sampler(jnp.log(p), states)(k_iid, config.num_chains)
    counts = discrete.state_counts(discrete.state_index(iid)[None], 2 ** length)
    iid_tv = float(discrete.total_variation(counts, p)[0])
    x0 = jax.random.bernoulli(k_init, 0.5, (config.num_chains, length)).astype(jnp.int32)

    curves, accept, seconds = {}, {}, {}
    for name, (log_target, kernel, log_prop) in _kernels(config, model, states,
                                                        log_p1).items():
        if name not in config.methods:
            continue
        t0 = time.time()
        state = discrete.init_state(log_target, x0, log_prop)
        run = jax.jit(lambda s, k, kernel=kernel: discrete.run_chains(
            kernel, s, k, config.num_records, config.record_every))
        indices, acc = run(state, k_run)
        tv = discrete.total_variation(discrete.state_counts(indices, 2 ** length), p)
        curves[name] = np.asarray(tv).tolist()
        accept[name] = float(jnp.mean(acc))
        seconds[name] = time.time() - t0
    return {"seed": seed, "fit": fit, "iid_tv": iid_tv, "tv": curves, "accept": accept,
            "seconds": seconds}


# --- the experiment ---------------------------------------------------------------------------
def evaluations(config: ml_collections.ConfigDict) -> np.ndarray:
    """Target evaluations per chain at each record (one to initialize, one per step)."""
    return 1 + config.record_every * np.arange(1, config.num_records + 1)


def _first_below(curve: list[float], threshold: float, evals: np.ndarray) -> tuple[int, bool]:
    below = np.flatnonzero(np.asarray(curve) <= threshold)
    return (int(evals[below[0]]), True) if below.size else (int(evals[-1]), False)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    _check(config)
    evals = evaluations(config)
    seeds = [run_seed(config, config.seed + s) for s in range(config.num_seeds)]
    threshold = float(np.mean([s["iid_tv"] for s in seeds])) + config.tv_margin
    rows = []
    for name in [m for m in METHODS if m in config.methods]:
        hits = [_first_below(s["tv"][name], threshold, evals) for s in seeds]
        rows.append({"method": name,
                     "evals_to_threshold": [h[0] for h in hits],
                     "reached": [h[1] for h in hits],
                     "final_tv": [s["tv"][name][-1] for s in seeds],
                     "accept": [s["accept"][name] for s in seeds],
                     "seconds": [s["seconds"][name] for s in seeds]})
    _figure(seeds, rows, evals, threshold, os.path.join(workdir, "figures", "tv_curves.png"))
    return {"rows": rows, "threshold": threshold, "evaluations": evals.tolist(), "seeds": seeds,
            "train_seconds": {f"seed{s['seed']}": s["fit"]["seconds"] for s in seeds}}


def mean_interval(values, num: int = paired.BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean over seeds with its 95% percentile bootstrap interval."""
    v = np.asarray(values, np.float64)
    means = v[np.random.default_rng(seed).integers(0, len(v), (num, len(v)))].mean(1)
    return float(v.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def markdown(result: dict) -> str:
    seeds = result["seeds"]
    fit = {k: mean_interval([s["fit"][k] for s in seeds]) for k in ("kl_p1_q", "tv_p1_q",
                                                                    "tv_paper_target")}
    iid = mean_interval([s["iid_tv"] for s in seeds])
    budget = result["evaluations"][-1]
    lines = [f"TV threshold {result['threshold']:.3f} (iid TV of as many exact samples "
             f"{iid[0]:.3f} + margin); budget {budget} target evaluations per chain; "
             f"{len(seeds)} seeds, 95% bootstrap intervals over seeds.", "",
             "| method | evaluations to TV <= threshold | seeds reached | final TV | "
             "acceptance | seconds |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        e, tv = mean_interval(r["evals_to_threshold"]), mean_interval(r["final_tv"])
        lines.append(f"| {r['method']} | {e[0]:.0f} [{e[1]:.0f}, {e[2]:.0f}] | "
                     f"{sum(r['reached'])}/{len(r['reached'])} | {tv[0]:.3f} "
                     f"[{tv[1]:.3f}, {tv[2]:.3f}] | {np.mean(r['accept']):.3f} | "
                     f"{np.mean(r['seconds']):.1f} |")
    lines += ["", f"Learned proposal: KL(p_1 || q_theta) = {fit['kl_p1_q'][0]:.3f} nats "
              f"[{fit['kl_p1_q'][1]:.3f}, {fit['kl_p1_q'][2]:.3f}], TV(p_1, q_theta) = "
              f"{fit['tv_p1_q'][0]:.3f}; the paper's acceptance targets q_theta e^(-E_2), at TV "
              f"{fit['tv_paper_target'][0]:.3f} [{fit['tv_paper_target'][1]:.3f}, "
              f"{fit['tv_paper_target'][2]:.3f}] from p. Censored seeds count at the budget."]
    return "\n".join(lines) + "\n"


def _row(result: dict, method: str) -> dict | None:
    return next((r for r in result["rows"] if r["method"] == method), None)


def claims(result: dict) -> list[dict]:
    out = []
    mh = _row(result, "mh_learned")
    if mh is None or len(mh["reached"]) < 2:
        return out
    for baseline in ("gibbs", "local_flip"):
        b = _row(result, baseline)
        if b is not None:
            out.append(paired.compare(
                f"MH with a learned proposal reaches TV <= {result['threshold']:.3f} in fewer "
                f"target evaluations than {baseline} (per seed; censored at the budget)",
                f"evals({baseline})", b["evals_to_threshold"], "evals(mh_learned)",
                mh["evals_to_threshold"], binary=False))
    paper_row = _row(result, "mh_paper")
    if paper_row is not None:
        out.append(paired.compare(
            "with a learned proposal, the exact acceptance (q_theta terms kept) ends closer to "
            "the target than the paper's clip(e^(E_2(x) - E_2(x')))",
            "final TV(mh_paper)", paper_row["final_tv"], "final TV(mh_learned)",
            mh["final_tv"], binary=False))
    return out


def _figure(seeds: list[dict], rows: list[dict], evals: np.ndarray, threshold: float,
            path: str) -> None:
    plt = plots.pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        tv = np.asarray([s["tv"][r["method"]] for s in seeds])
        ax.plot(evals, tv.mean(0), label=r["method"])
        ax.fill_between(evals, tv.min(0), tv.max(0), alpha=0.2)
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label="threshold")
    ax.axhline(float(np.mean([s["iid_tv"] for s in seeds])), color="gray", ls=":", lw=0.8,
               label="iid TV")
    ax.set(xscale="log", xlabel="target evaluations per chain", ylabel="TV to exact target",
           title="Discrete composition: mean over seeds, band min-max")
    ax.legend(fontsize=8)
    common.save_figure(fig, path)
