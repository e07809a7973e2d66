"""Compositional Sculpting on 2D oracles: guided (exact / learned classifier) and algebraic routes.

    python scripts/sculpt2d.py --config=configs/sculpt2d.py:quick --workdir=runs/sculpt2d

Writes ``sculpt2d.json``, ``sculpt2d.md``, ``samples/*.npz`` and
``figures/sculpt2d_*.png`` under the workdir (and ``gflownet.json`` when
``config.gflownet`` is set and :mod:`compdiff.gflownet` exists); learned
classifiers live in ``<workdir>/classifiers/`` and are reused by later runs.
"""

from compdiff import cli, sculpt2d

main = cli.table_main(sculpt2d)

if __name__ == "__main__":
    cli.run(main)
