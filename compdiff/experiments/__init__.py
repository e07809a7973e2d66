"""Experiments: one module per table on the shared protocol of :mod:`.common`.

An experiment is a module ``compdiff/experiments/<name>.py`` with
``run(config, workdir) -> rows`` (or a dict holding ``"rows"`` and extras) and
``markdown(result) -> str``, and optionally ``claims(result) -> list[dict]``; its config
names it (``config.experiment = "<name>"``) and ``scripts/run.py`` runs it:

    python scripts/run.py --config=configs/experiments/<name>.py:<variant> --workdir=DIR

Library modules never import this package (``tests/test_imports.py``). See
``docs/experiments.md``.
"""

from compdiff.experiments.common import get, names, run

__all__ = ["get", "names", "run"]
