"""captum-deconvviz: Zeiler & Fergus's DeconvNet, with true switch unpooling, for Captum."""

from .attr import EngineGuidedBackprop, NeuronEngineGuidedBackprop, NeuronZFDeconvolution, ZFDeconvolution
from .engine import ReverseRules
from .projection import project_units

__version__ = "0.1.0.dev0"

__all__ = [
    "EngineGuidedBackprop",
    "NeuronEngineGuidedBackprop",
    "NeuronZFDeconvolution",
    "ReverseRules",
    "ZFDeconvolution",
    "__version__",
    "project_units",
]
