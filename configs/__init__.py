"""ml_collections config files, used as ``--config=configs/<file>.py:<variant>``."""
