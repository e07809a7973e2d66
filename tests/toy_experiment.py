"""An experiment outside the package, as a user writes one: ``run`` and ``markdown``.

``config.experiment = "toy_experiment"`` (a dotted module path would do too) runs it under
the protocol; ``tests/test_experiments.py`` checks what the protocol adds.
"""

import ml_collections

from compdiff.experiments import paired


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    return [{"name": "a", "score": float("nan"), "correct": [1, 1, 1, 1, 1, 1, 0]},
            {"name": "b", "score": 2.0, "correct": [0, 0, 0, 0, 0, 0, 0]}]


def claims(result: dict) -> list[dict]:
    a, b = (r["correct"] for r in result["rows"])
    return [paired.compare("a beats b", "a", a, "b", b, binary=True)]


def markdown(result: dict) -> str:
    return "| name | score |\n|---|---|\n" + "".join(
        f"| {r['name']} | {r['score']} |\n" for r in result["rows"])
