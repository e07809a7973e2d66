"""Experiment configs: each names its experiment (``config.experiment``) for scripts/run.py."""
