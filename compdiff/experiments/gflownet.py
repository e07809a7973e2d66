"""The GFlowNet sculpting table: L1 to exact targets per operator and method.

    python scripts/run.py --config=configs/experiments/gflownet.py:quick --workdir=runs/gfn

Writes ``gflownet.json`` and ``gflownet.md`` (the protocol, :mod:`.common`). Every number
is exact, so the table has no sampling noise and no statistical claims.

Rows ``{"operator", "method", "l1"}``, ``l1 = sum_x |p_method(x) - p_target(x)|``
over the ``H^2`` objects (2 x total variation), every distribution exact (the
composed policies' by dynamic programming over the DAG, the targets by
enumeration from ``R_1, R_2``), so no number carries sampling noise:

* ``base_1`` / ``base_2``, method ``trained``: each trained GFlowNet against ``R_i / Z_i``.
* every operator (observations ``y_1..y_n``), methods:
  - ``exact_base_exact_classifier``: the exact flow policies of ``R_i`` and the
    exact classifier; checks the composition itself (float64 round-off);
  - ``no_guidance``: the trained bases' plain mixture, what sampling without the
    classifier gives (the scale of the composition's effect);
  - ``trained_base_enumerated``: the composition computed by enumeration from the
    trained bases' own distributions, the floor that policy error sets for any
    classifier;
  - ``trained_base_exact_classifier``: the trained bases with the classifier the
    paper's training converges to, computed by enumeration (policy error only);
  - ``trained_base_learned_classifier``: the trained bases with the classifier
    trained on their trajectories (the paper's method: policy + classifier error).
"""

from __future__ import annotations

import time

import ml_collections
import numpy as np
from absl import logging

from compdiff.gflownet import classifier, composition, env, tb


def _observations(config: ml_collections.ConfigDict, m: int) -> dict[str, tuple[int, ...]]:
    ops = {name: tuple(obs) for name, obs in config.operators.items()}
    if not ops:
        raise ValueError("gflownet config has no operators")
    for obs in ops.values():
        composition.check_observations(obs, m)
    return ops


def run(config: ml_collections.ConfigDict, workdir: str | None = None) -> list[dict]:
    """Trains two GFlowNets and a classifier, composes, and returns the rows above
    (nothing is written to ``workdir``: the networks train in seconds)."""
    start = time.time()
    h = env.check_size(config.size)
    log_rs = [env.log_reward(name, h, temp) for name, temp in config.rewards]
    m = len(log_rs)
    if m != 2:
        raise ValueError(f"gflownet config has {m} rewards: the table composes exactly 2")
    ops = _observations(config, m)
    n = max(1, *(len(obs) for obs in ops.values()))
    truth = [env.normalize(lr) for lr in log_rs]
    rows = []
    trained = []
    for i, log_r in enumerate(log_rs):
        policy, info = tb.train(log_r, config.gflownet, seed=config.seed + i)
        trained.append(policy)
        err = composition.l1(env.terminal_distribution(policy), truth[i])
        logging.info("gflownet base_%d: L1 %.4f, log Z %.3f (exact %.3f), %.0fs", i + 1, err,
                     info["log_z"], np.log(np.exp(log_r).sum()), info["seconds"])
        rows.append({"operator": f"base_{i + 1}", "method": "trained", "l1": err})
    exact = [env.flow_policy(lr) for lr in log_rs]
    learned_nonterm, learned_term, info = classifier.train(trained, n, config.classifier,
                                                           seed=config.seed + m)
    best = composition.exact_classifier(trained, n)
    trained_dists = [env.terminal_distribution(p) for p in trained]
    # The terminal cross-entropy the exact classifier reaches on these bases' samples.
    floor = -np.mean([np.sum(p * best[1][..., i]) for i, p in enumerate(trained_dists)])
    logging.info("gflownet classifier: terminal loss %.4f (exact classifier %.4f), %.0fs",
                 info["loss_terminal"], floor, info["seconds"])
    classifiers = {
        "exact_base_exact_classifier": (exact, composition.exact_classifier(exact, n)),
        "trained_base_exact_classifier": (trained, best),
        "trained_base_learned_classifier": (trained, (learned_nonterm, learned_term)),
    }
    for name, obs in ops.items():
        goal = composition.target(truth, obs)
        rows.append({"operator": name, "method": "trained_base_enumerated",
                     "l1": composition.l1(composition.target(trained_dists, obs), goal)})
        rows.append({"operator": name, "method": "no_guidance",
                     "l1": composition.l1(composition.target(trained_dists, ()), goal)})
        for method, (policies, (nonterm, term)) in classifiers.items():
            composed = composition.composed_policy(policies, nonterm, term, obs)
            rows.append({"operator": name, "method": method,
                         "l1": composition.l1(env.terminal_distribution(composed), goal)})
    logging.info("gflownet table (%s, %dx%d grid) in %.0fs", config.get("variant", "?"), h, h,
                 time.time() - start)
    return rows


def markdown(result: dict | list[dict]) -> str:
    """The rows as a Markdown table: one line per operator, one column per method."""
    rows = result["rows"] if isinstance(result, dict) else result
    methods = list(dict.fromkeys(r["method"] for r in rows))
    operators = list(dict.fromkeys(r["operator"] for r in rows))
    cell = {(r["operator"], r["method"]): r["l1"] for r in rows}
    lines = ["| operator | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for op in operators:
        vals = [_number(cell[op, m]) if (op, m) in cell else "" for m in methods]
        lines.append(f"| {op} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _number(v: float) -> str:
    return f"{v:.4f}" if v >= 1e-4 else f"{v:.0e}"
