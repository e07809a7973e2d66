"""RRR Table 3 at CPU scale (classifier guidance): trains or reuses the models, samples, scores.

    python scripts/guidance_table.py --config=configs/guidance_table.py:quick \
        --workdir=runs/guidance_quick

Writes ``guidance_table.json``, ``guidance_table.md`` and ``figures/*.png``
under the workdir; component models live in ``<workdir>/<dataset>/models/`` and are
reused by later runs.
"""

from compdiff import cli, guidance_table

main = cli.table_main(guidance_table)

if __name__ == "__main__":
    cli.run(main)
