"""Models of the study: the model families behind one front door (family.py), the selective scan,
and their cost.

The rest of ablate reaches a model through `family_of(model.name)` and `count_cost`. Importing this
package imports every module in it, so each family module registers itself (its `Family`, and any
timm names such as `ablate_mambaout_<variant>`): a new family is a new module here, nothing else.
"""
import importlib
import pkgutil

from .cost import Cost, count_cost, tau
from .family import Family, Switch, families, family_of, variant_names
from .mambaout import INITS, VARIANTS, MambaOut, build_model, seq_len, stage_grid
from .ssm import SCAN_ORDERS, SelectiveSSM2d, selective_scan

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f'{__name__}.{_module.name}')

__all__ = ['Cost', 'Family', 'INITS', 'MambaOut', 'SCAN_ORDERS', 'SelectiveSSM2d', 'Switch', 'VARIANTS', 'build_model',
           'count_cost', 'families', 'family_of', 'selective_scan', 'seq_len', 'stage_grid', 'tau', 'variant_names']
