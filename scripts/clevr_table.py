"""RRR Table 2 on rendered CLEVR scenes: trains (or reuses) the models and the classifier, samples.

    python scripts/clevr_table.py --config=configs/clevr_table.py:quick --workdir=runs/clevr_quick

Writes ``clevr_table.json``, ``clevr_table.md`` and ``figures/*.png``
under the workdir; component models live in ``<workdir>/models/`` and are
reused by later runs.
"""

from compdiff import clevr_table, cli

main = cli.table_main(clevr_table)

if __name__ == "__main__":
    cli.run(main)
