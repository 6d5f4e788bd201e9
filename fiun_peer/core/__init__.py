"""The paper as pure functions over tensors and graphs: no sockets, files, keys or clocks."""

from . import fisher, fiun, umig
from .fisher import fisher_from_features, last_layer_fisher
from .fiun import FIUnSettings, dampen, fiun_update, merge_fishers
from .umig import UMIG

__all__ = ["fisher", "fiun", "umig", "UMIG", "FIUnSettings", "dampen", "fiun_update",
           "merge_fishers", "fisher_from_features", "last_layer_fisher"]
