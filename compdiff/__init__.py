"""compdiff: compositional generation with energy-based diffusion models and annealed MCMC."""

from compdiff import runtime as _runtime

# Before any computation: XLA's concurrency-optimized CPU scheduler deadlocks
# some sampler scans on small machines (compdiff/runtime.py says which).
_runtime.avoid_cpu_scheduler_deadlock()
