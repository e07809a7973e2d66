"""RRR 5.4 at CPU scale (text to image): trains or reuses the models, samples, scores.

    python scripts/text2image_table.py --config=configs/text2image_table.py:quick \
        --workdir=runs/text2image_quick

Writes ``text2image_table.json``, ``text2image_table.md``, ``figures/*.png`` and
``samples/*.npz`` under the workdir; the generator and the judge live in
``<workdir>/models/`` and are reused by later runs.
"""

from compdiff import cli, text2image_table

main = cli.table_main(text2image_table)

if __name__ == "__main__":
    cli.run(main)
