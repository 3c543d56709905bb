"""captum-deconvviz: Zeiler & Fergus's DeconvNet, with true switch unpooling, for Captum."""

from .attr import EngineGuidedBackprop, NeuronEngineGuidedBackprop, NeuronZFDeconvolution, ZFDeconvolution
from .engine import ReverseRules
from .mining import mine_topk
from .mining_result import ChannelStats, Crops, MiningResult, Record
from .projection import project_records, project_units
from .receptive_field import (
    ReceptiveField,
    ReceptiveFieldError,
    ReceptiveFieldTable,
    receptive_field,
    receptive_field_table,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ChannelStats",
    "Crops",
    "EngineGuidedBackprop",
    "MiningResult",
    "NeuronEngineGuidedBackprop",
    "NeuronZFDeconvolution",
    "ReceptiveField",
    "ReceptiveFieldError",
    "ReceptiveFieldTable",
    "Record",
    "ReverseRules",
    "ZFDeconvolution",
    "__version__",
    "mine_topk",
    "project_records",
    "project_units",
    "receptive_field",
    "receptive_field_table",
]
