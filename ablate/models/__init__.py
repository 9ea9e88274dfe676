"""Models of the study: the MambaOut skeleton +/- Mamba's selective SSM, its scan, and its cost.

The rest of ablate reaches a model through `family_of(model.name)` (see family.py) and
`count_cost`. Importing this package registers every family here, and `ablate_mambaout_<variant>`
with timm's model registry.
"""
from .cost import Cost, count_cost, tau
from .family import Family, Switch, family_of, variant_names
from .mambaout import INITS, VARIANTS, MambaOut, build_model, seq_len, stage_grid
from .ssm import SCAN_ORDERS, SelectiveSSM2d, selective_scan

__all__ = ['Cost', 'Family', 'INITS', 'MambaOut', 'SCAN_ORDERS', 'SelectiveSSM2d', 'Switch', 'VARIANTS', 'build_model',
           'count_cost', 'family_of', 'selective_scan', 'seq_len', 'stage_grid', 'tau', 'variant_names']
