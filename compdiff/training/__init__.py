"""The trainer's parts, each with one job (the loop itself is :mod:`compdiff.train`).

- :mod:`.tasks`: the task registry (per task: its data, network and loss) and the
  config -> schedule / data / network builders; a new task is one ``register_task``.
- :mod:`.state`: the train state (parameters, bias-corrected EMA, Adam), its
  initialization and restoring it from a work directory's checkpoints.
- :mod:`.writers`: what a run writes as it goes: metrics.jsonl, TensorBoard and the
  console progress line (rate and ETA).

Loading a trained model lives in :mod:`compdiff.models.loading`, which needs no trainer.
"""
