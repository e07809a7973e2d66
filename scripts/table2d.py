"""RRR's 2D composition table: trains (or reuses) the component models, samples, evaluates.

    python scripts/table2d.py --config=configs/table2d.py:quick --workdir=runs/table2d

Writes ``table2d.json``, ``table2d.md``, ``samples/*.npz`` and ``figures/*.png``
under the workdir; component models live in ``<workdir>/models/`` and are
reused by later runs.
"""

from compdiff import cli, table2d

main = cli.table_main(table2d)

if __name__ == "__main__":
    cli.run(main)
