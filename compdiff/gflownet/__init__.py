"""GFlowNets on a 2D grid and their compositional sculpting, exact by enumeration.

Modules: :mod:`~compdiff.gflownet.env` (the grid, rewards, exact dynamic
programs), :mod:`~compdiff.gflownet.tb` (trajectory-balance training),
:mod:`~compdiff.gflownet.classifier` (the sculpting classifier and its training),
:mod:`~compdiff.gflownet.composition` (composed policies, exact classifier,
targets). The L1 table is the experiment :mod:`compdiff.experiments.gflownet`
(``configs/experiments/gflownet.py``). See docs/gflownet.md.
"""
