"""Models of the study: the MambaOut skeleton +/- Mamba's selective SSM, its scan, and its cost.

Importing this package registers `ablate_mambaout_<variant>` with timm's model registry.
"""
from .cost import Cost, count_cost, tau
from .mambaout import INITS, VARIANTS, MambaOut, build_model, seq_len, stage_grid
from .ssm import SCAN_ORDERS, SelectiveSSM2d, selective_scan

__all__ = ['Cost', 'INITS', 'MambaOut', 'SCAN_ORDERS', 'SelectiveSSM2d', 'VARIANTS', 'build_model', 'count_cost',
           'selective_scan', 'seq_len', 'stage_grid', 'tau']
