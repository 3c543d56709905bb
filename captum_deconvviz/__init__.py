"""captum-deconvviz: Zeiler & Fergus's DeconvNet, with true switch unpooling, for Captum."""

from .attr import EngineGuidedBackprop, NeuronEngineGuidedBackprop, NeuronZFDeconvolution, ZFDeconvolution
from .engine import ReverseRules
from .projection import project_units
from .receptive_field import (
    ReceptiveField,
    ReceptiveFieldError,
    ReceptiveFieldTable,
    receptive_field,
    receptive_field_table,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "EngineGuidedBackprop",
    "NeuronEngineGuidedBackprop",
    "NeuronZFDeconvolution",
    "ReceptiveField",
    "ReceptiveFieldError",
    "ReceptiveFieldTable",
    "ReverseRules",
    "ZFDeconvolution",
    "__version__",
    "project_units",
    "receptive_field",
    "receptive_field_table",
]
