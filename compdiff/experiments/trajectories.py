"""Du & Kaelbling 2024, Figs. 5 and 7: trajectory models factorized into chunks, and planning.

Environment: :mod:`compdiff.maze` (a damped point mass with force limits in a U-maze);
episodes of ``H`` rows ``(p, v, f)`` under an Ornstein-Uhlenbeck force, in model units
(:func:`compdiff.maze.to_model`). Every model is an energy-parameterized residual MLP
(``configs/models/toy2d.py`` trained on ``.npz`` arrays through ``data.path``), on the
``T``-level schedule of ``config.levels``.

Model kinds (:mod:`compdiff.chunks`):

- ``monolithic``: one model of the whole flat trajectory ``R^{6H}``;
- ``chunks``: one unconditional chunk model of ``L``-row windows (trained on every window of
  the episodes, stride 1), composed at the windows ``0, S, ..., H - L``: the paper's
  product, overlapping rows counted by both windows;
- ``junction``: the same chunks divided by a model of the ``(L - S)``-row overlaps, every
  row counted once (exact for Markov rows at level 0).

Fig. 5 (dynamics accuracy). For each episode count ``n`` of ``config.episodes`` and training
seed (the first ``n`` episodes of the seed's pool, so the sets are nested), every model is
trained in stages (``config.stages``, resumed) and after each stage sampled at
``config.eval.num_starts`` start states drawn from a fresh seed (unseen): reverse diffusion
on the model times a start well (:class:`compdiff.chunks.Well`, one target per chain) on the
first state. Per trajectory: the dynamic-consistency error ``max_k |s_{k+1} - step(s_k,
f_k)|`` in raw units and wall crossings. Every model shares one key: sample ``i`` of every
row starts from the same noise at the same start state, so rows pair.

Fig. 7 (planning). The models of ``config.planning.episodes`` (seed ``planning.seed``, last
stage) times a start well and a goal well (the last position), sampled at ``planning.pairs``
start/goal pairs of fresh episodes (goal: the episode's own last position, so it is
reachable; pairs closer than ``min_distance`` are skipped), ``planning.chains`` chains per
pair, one key per pair shared by all samplers. Samplers at equal NFE: reverse diffusion on
all ``T`` levels, the MCMC rows on ``T_c = planning.coarse_levels`` respaced levels
(:func:`compdiff.chunks.respace`) with ``T / T_c - 1`` gradients per level. A chain
succeeds when its last position is within ``radius`` of the goal, its consistency error is
at most ``config.eval.tolerance`` and it crosses no wall; a pair's outcome is its fraction of
successful chains. The baseline samples the trajectory model with the start well alone.

Claims: the chunk product's consistency error is below the monolithic model's at the
fewest episodes (paired bootstrap of ``-log10 error`` over start states and seeds); per
planning model, the best goal-composed sampler beats the no-goal baseline and adapted MALA
SMC beats reverse diffusion at equal NFE (paired bootstrap over pairs).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from compdiff import chunks, maze, plots, samplers
from compdiff.compose import Density
from compdiff.experiments import common, paired
from compdiff.models import loading
from compdiff.training import tasks

KINDS = ("monolithic", "chunks", "junction")
BOOTSTRAP = 2000


# --- data and models --------------------------------------------------------------------------
def check(config: ml_collections.ConfigDict) -> None:
    """A ValueError naming the first bad field of ``config``."""
    bad = [k for k in config.kinds if k not in KINDS]
    if bad or not config.kinds:
        raise ValueError(f"unknown model kinds {bad or '()'} in config.kinds; known: {KINDS}")
    chunks.window_starts(config.horizon, config.chunk.length, config.chunk.stride)
    if "junction" in config.kinds and config.chunk.stride >= config.chunk.length:
        raise ValueError("the junction kind needs overlapping chunks: config.chunk.stride < "
                         "config.chunk.length")
    if list(config.stages) != sorted(set(config.stages)) or min(config.stages) < 1:
        raise ValueError(f"config.stages must be increasing positive step counts, got "
                         f"{config.stages}")
    if min(config.episodes) < 1:
        raise ValueError(f"config.episodes must be positive, got {config.episodes}")
    plan = config.planning
    if plan.kinds and (plan.episodes not in config.episodes or plan.seed not in config.seeds
                       or not set(plan.kinds) <= set(config.kinds)):
        raise ValueError("config.planning plans with trained models: its episodes, seed and "
                         "kinds must be among config.episodes, config.seeds and config.kinds")
    if plan.kinds and config.levels % plan.coarse_levels:
        raise ValueError(f"config.levels ({config.levels}) must be a multiple of "
                         f"config.planning.coarse_levels ({plan.coarse_levels})")


def _roles(kind: str) -> tuple[str, ...]:
    return {"monolithic": ("full",), "chunks": ("chunk",), "junction": ("chunk", "overlap")}[kind]


def _role_data(config, role: str, episodes: np.ndarray) -> np.ndarray:
    length, stride = config.chunk.length, config.chunk.stride
    if role == "full":
        return maze.to_model(episodes)
    rows = length if role == "chunk" else length - stride
    return maze.to_model(maze.windows(episodes, rows))


def train_jobs(config, workdir: str, steps: int) -> dict[str, ml_collections.ConfigDict]:
    """``{models/<role>_n<n>_s<seed>: training config}`` of every model, ``steps`` steps;
    writes each model's ``.npz`` data on first use."""
    roles = list(dict.fromkeys(r for k in config.kinds for r in _roles(k)))
    jobs = {}
    for seed in config.seeds:
        pool = maze.rollout(maze.U_MAZE, maze.Policy(), max(config.episodes), config.horizon,
                            seed=config.seed * 1000 + seed)
        for n in config.episodes:
            for role in roles:
                path = os.path.join(workdir, "data", f"{role}_n{n}_s{seed}.npz")
                if not os.path.exists(path):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    np.savez(path, x=_role_data(config, role, pool[:n]))
                c = ml_collections.ConfigDict(config.train.to_dict())
                c.data.path = path
                c.schedule.num_levels = config.levels
                c.train.seed = seed
                c.train.steps = c.train.checkpoint_every = steps
                jobs[os.path.join("models", f"{role}_n{n}_s{seed}")] = c
    return jobs


def trajectory_density(config, workdir: str, kind: str, n: int, seed: int) -> Density:
    """The trained trajectory model of ``kind`` (module docstring) over ``R^{6H}``."""
    load = lambda role: loading.load_model(os.path.join(workdir, "models",
                                                        f"{role}_n{n}_s{seed}"))
    h, length, stride = config.horizon, config.chunk.length, config.chunk.stride
    if kind == "monolithic":
        return load("full")
    if kind == "chunks":
        return chunks.chunk_product(load("chunk"), h, length, stride, maze.ROW)
    return chunks.junction(load("chunk"), load("overlap"), h, length, stride, maze.ROW)


def start_well(config, starts: np.ndarray, schedule) -> chunks.Well:
    target = np.asarray(starts, np.float64) * maze.MODEL_SCALE[:maze.STATE]
    return chunks.well(target, range(maze.STATE), config.wells.start_std, schedule,
                       config.horizon * maze.ROW, name="start")


def goal_well(config, goal: np.ndarray, schedule) -> chunks.Well:
    first = (config.horizon - 1) * maze.ROW
    return chunks.well(np.asarray(goal, np.float64), (first, first + 1), config.wells.goal_std,
                       schedule, config.horizon * maze.ROW, name="goal")


# --- Fig. 5: dynamics accuracy ----------------------------------------------------------------
def _accuracy_rows(config, workdir: str, steps: int, starts: np.ndarray) -> list[dict]:
    schedule = tasks.make_schedule(ml_collections.ConfigDict(
        {"schedule": {"name": config.train.schedule.name, "num_levels": config.levels}}))
    sampler = samplers.get("reverse")
    key = jax.random.PRNGKey(config.seed + 1)  # shared by every row: paired samples
    rows = []
    for kind in config.kinds:
        for n in config.episodes:
            for seed in config.seeds:
                target = trajectory_density(config, workdir, kind, n, seed) * start_well(
                    config, starts, schedule)
                t0 = time.time()
                x, _ = samplers.sample(target, sampler, schedule, key, len(starts))
                traj = maze.from_model(np.asarray(x), config.horizon)
                result = maze.check(maze.U_MAZE, traj)
                error = result["error"]
                rows.append({
                    "kind": kind, "episodes": n, "seed": seed, "steps": steps,
                    "median_error": float(np.median(error)), "mean_error": float(np.mean(error)),
                    "consistent": float(np.mean(error <= config.eval.tolerance)),
                    "crossing_rate": float(np.mean(result["crossings"] > 0)),
                    "start_error": float(np.median(np.linalg.norm(traj[:, 0, :maze.STATE]
                                                                  - starts, axis=-1))),
                    "seconds": time.time() - t0, "errors": error})
                logging.info("%s n=%d seed=%d steps=%d: median error %.4f, crossings %.2f",
                             kind, n, seed, steps, rows[-1]["median_error"],
                             rows[-1]["crossing_rate"])
    return rows


# --- Fig. 7: planning -------------------------------------------------------------------------
def planning_pairs(config) -> tuple[np.ndarray, np.ndarray]:
    """``(start states [P, 4], goals [P, 2])`` from fresh episodes (module docstring)."""
    plan = config.planning
    episodes = maze.rollout(maze.U_MAZE, maze.Policy(), 20 * plan.pairs, config.horizon,
                            seed=config.seed + 2_000_000)
    far = np.linalg.norm(episodes[:, -1, :2] - episodes[:, 0, :2], axis=-1) >= plan.min_distance
    chosen = episodes[far][:plan.pairs]
    if len(chosen) < plan.pairs:
        raise ValueError(f"only {len(chosen)} of {20 * plan.pairs} fresh episodes end "
                         f"{plan.min_distance} from their start; lower planning.min_distance")
    return chosen[:, 0, :maze.STATE], chosen[:, -1, :2]


def _cluster_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _plan(config, workdir: str) -> tuple[list[dict], dict]:
    plan = config.planning
    fine = tasks.make_schedule(ml_collections.ConfigDict(
        {"schedule": {"name": config.train.schedule.name, "num_levels": config.levels}}))
    coarse, levels = chunks.respace(fine, plan.coarse_levels)
    starts, goals = planning_pairs(config)
    rows, examples = [], {"starts": starts, "goals": goals, "plans": {}}
    last = max(config.stages)
    for kind in plan.kinds:
        model = trajectory_density(config, workdir, kind, plan.episodes, plan.seed)
        for spec in plan.samplers:
            sampler = common.make_sampler(spec)
            label = spec.label or common.row_label(spec)
            success, reached, consistent, crossed, plans = [], [], [], [], []
            t0 = time.time()
            for i, (start, goal) in enumerate(zip(starts, goals)):
                density = model * start_well(config, start, fine)
                if spec.goal:
                    density = density * goal_well(config, goal, fine)
                schedule = fine
                if spec.levels == "coarse":
                    density, schedule = chunks.respaced(density, levels), coarse
                key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 7), i)
                x, stats = samplers.sample(density, sampler, schedule, key, plan.chains)
                traj = maze.from_model(np.asarray(x), config.horizon)
                result = maze.check(maze.U_MAZE, traj, goal, plan.radius)
                ok = ((result["error"] <= config.eval.tolerance) & (result["crossings"] == 0))
                success.append(np.mean(ok & result["reached"]))
                reached.append(np.mean(result["reached"]))
                consistent.append(np.mean(ok))
                crossed.append(np.mean(result["crossings"] > 0))
                plans.append(traj[:, :, :2])
            success = np.asarray(success)
            rows.append({"kind": kind, "sampler": label, "goal": bool(spec.goal),
                         "nfe": stats.nfe, "success": float(success.mean()),
                         "success_ci": _cluster_interval(success),
                         "reached": float(np.mean(reached)),
                         "consistent": float(np.mean(consistent)),
                         "crossing_rate": float(np.mean(crossed)),
                         "seconds": time.time() - t0, "steps": last,
                         "per_pair_success": success})
            examples["plans"][f"{kind}/{label}"] = np.asarray(plans[:config.figure.pairs])
            logging.info("plan %s %s: success %.3f (nfe %d, %.0fs)", kind, label,
                         rows[-1]["success"], stats.nfe, rows[-1]["seconds"])
    return rows, examples


# --- the experiment ---------------------------------------------------------------------------
def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    check(config)
    starts = maze.rollout(maze.U_MAZE, maze.Policy(), config.eval.num_starts, 2,
                          seed=config.seed + 1_000_000)[:, 0, :maze.STATE]
    rows, train_seconds = [], {}
    for steps in config.stages:
        seconds = common.train_models(train_jobs(config, workdir, steps), workdir)
        train_seconds[f"stage_{steps}"] = seconds
        rows += _accuracy_rows(config, workdir, steps, starts)
    plan_rows, examples = _plan(config, workdir) if config.planning.kinds else ([], None)
    _figures(rows, plan_rows, examples, config, os.path.join(workdir, "figures"))
    return {"rows": rows, "planning": plan_rows, "train_seconds": train_seconds,
            "claims": _claims(rows, plan_rows, config)}


def _claims(rows: list[dict], plan_rows: list[dict], config) -> list[dict]:
    claims = []
    last, fewest = max(config.stages), min(config.episodes)
    final = [r for r in rows if r["steps"] == last and r["episodes"] == fewest]
    outcome = lambda kind: np.concatenate([-np.log10(np.maximum(r["errors"], 1e-6))
                                           for r in sorted(final, key=lambda r: r["seed"])
                                           if r["kind"] == kind])
    for kind in ("chunks", "junction"):
        if kind in config.kinds and "monolithic" in config.kinds:
            claims.append(paired.compare(
                f"Fig. 5: at {fewest} episodes the {kind} model simulates the dynamics more "
                "accurately than the monolithic model (-log10 consistency error, pairs over "
                f"start states x {len(config.seeds)} seeds)", kind, outcome(kind),
                "monolithic", outcome("monolithic"), binary=False))
    for kind in dict.fromkeys(r["kind"] for r in plan_rows):
        cell = [r for r in plan_rows if r["kind"] == kind]
        base = [r for r in cell if not r["goal"]]
        goal = [r for r in cell if r["goal"]]
        if base and goal:
            best = max(goal, key=lambda r: r["success"])
            claims.append(paired.compare(
                f"Fig. 7 ({kind}): composing the goal well plans ({best['sampler']} beats "
                f"sampling without the goal, {base[0]['sampler']}; per-pair success)",
                best["sampler"], best["per_pair_success"], base[0]["sampler"],
                base[0]["per_pair_success"], binary=False))
        smc = [r for r in goal if r["sampler"] == config.planning.smc_label]
        rev = [r for r in goal if r["sampler"] == config.planning.reverse_label]
        if smc and rev:
            claims.append(paired.compare(
                f"Planning ({kind}): adapted MALA SMC beats reverse diffusion at equal NFE "
                f"({smc[0]['nfe']} vs {rev[0]['nfe']}; per-pair success)", smc[0]["sampler"],
                smc[0]["per_pair_success"], rev[0]["sampler"], rev[0]["per_pair_success"],
                binary=False))
    return claims


def _figures(rows: list[dict], plan_rows: list[dict], examples: dict | None, config,
             directory: str) -> None:
    plt = plots.pyplot()

    last = max(config.stages)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for kind in config.kinds:
        for ax, x_key, fixed in ((axes[0], "episodes", ("steps", last)),
                                 (axes[1], "steps", ("episodes", min(config.episodes)))):
            cell = [r for r in rows if r["kind"] == kind and r[fixed[0]] == fixed[1]]
            xs = sorted({r[x_key] for r in cell})
            err = np.asarray([[r["median_error"] for r in cell if r[x_key] == x] for x in xs])
            line, = ax.plot(xs, err.mean(1), "o-", label=kind)
            ax.fill_between(xs, err.min(1), err.max(1), color=line.get_color(), alpha=0.25)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"training {x_key}" + (f" ({last} steps)" if x_key == "episodes"
                                                  else f" ({fixed[1]} episodes)"))
    axes[0].set_ylabel("median consistency error (band: seeds)")
    axes[0].legend()
    common.save_figure(fig, os.path.join(directory, "error_vs_episodes_and_steps.png"))
    if not examples:
        return
    labels = list(examples["plans"])
    num = len(examples["plans"][labels[0]])
    fig, axes = plt.subplots(len(labels), num, figsize=(2.4 * num, 2.4 * len(labels)),
                             squeeze=False)
    for i, label in enumerate(labels):
        for j in range(num):
            ax = axes[i, j]
            maze.draw(ax, maze.U_MAZE)
            for path in examples["plans"][label][j]:
                ax.plot(path[:, 0], path[:, 1], "-", lw=0.7, alpha=0.6)
            ax.plot(*examples["starts"][j, :2], "g^", ms=7)
            ax.add_patch(plt.Circle(examples["goals"][j], config.planning.radius, color="r",
                                    fill=False, lw=1.5))
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    common.save_figure(fig, os.path.join(directory, "plans.png"))


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = ["Dynamics accuracy at unseen start states (median over start states; mean over "
             "seeds, [min, max]):", "",
             "| model | episodes | steps | median consistency error | consistent | "
             "crossing rate |", "|---|---|---|---|---|---|"]
    groups = dict.fromkeys((r["kind"], r["episodes"], r["steps"]) for r in rows)
    for kind, n, steps in sorted(groups, key=lambda g: (g[2], g[0], g[1])):
        cell = [r for r in rows if (r["kind"], r["episodes"], r["steps"]) == (kind, n, steps)]
        err = [r["median_error"] for r in cell]
        cons = [r["consistent"] for r in cell]
        cross = [r["crossing_rate"] for r in cell]
        lines.append(f"| {kind} | {n} | {steps} | {np.mean(err):.4f} [{min(err):.4f}, "
                     f"{max(err):.4f}] | {np.mean(cons):.2f} [{min(cons):.2f}, {max(cons):.2f}]"
                     f" | {np.mean(cross):.2f} |")
    if result.get("planning"):
        lines += ["", "Planning at unseen start/goal pairs (success: mean over pairs of the "
                  "per-pair success fraction, 95% bootstrap interval over pairs):", "",
                  "| model | sampler | goal well | NFE | success (95% CI) | reached | "
                  "consistent | crossing rate | s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in result["planning"]:
            lo, hi = r["success_ci"]
            lines.append(f"| {r['kind']} | {r['sampler']} | {'yes' if r['goal'] else 'no'} | "
                         f"{r['nfe']} | {r['success']:.2f} ({lo:.2f}-{hi:.2f}) | "
                         f"{r['reached']:.2f} | {r['consistent']:.2f} | "
                         f"{r['crossing_rate']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)
