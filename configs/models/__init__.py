"""Model and sampling configs: ``--config=configs/models/<file>.py:<variant>`` for
scripts/train.py (the models) and scripts/tapestry.py (``tapestry.py``)."""
