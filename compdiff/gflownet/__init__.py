"""GFlowNets on a 2D grid and their compositional sculpting, exact by enumeration.

Modules: :mod:`~compdiff.gflownet.env` (the grid, rewards, exact dynamic
programs), :mod:`~compdiff.gflownet.tb` (trajectory-balance training),
:mod:`~compdiff.gflownet.classifier` (the sculpting classifier and its training),
:mod:`~compdiff.gflownet.composition` (composed policies, exact classifier,
targets), :mod:`~compdiff.gflownet.table` (the L1 table). See docs/gflownet.md.
"""

from compdiff.gflownet.table import default_config, gflownet_table

__all__ = ["default_config", "gflownet_table"]
