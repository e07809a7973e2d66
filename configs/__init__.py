"""ml_collections config files, used as ``--config=configs/<kind>/<file>.py:<variant>``:
``models/`` for scripts/train.py (and scripts/tapestry.py), ``experiments/`` for
scripts/run.py; ``common.py`` holds what both share (the variant parser, sampler rows)."""
