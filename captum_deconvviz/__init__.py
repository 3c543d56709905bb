"""captum-deconvviz: Zeiler & Fergus's DeconvNet, with true switch unpooling, for Captum."""

from .attr import EngineGuidedBackprop, NeuronEngineGuidedBackprop, NeuronZFDeconvolution, ZFDeconvolution
from .compare import ComparisonResult, RandomizationResult, compare_methods, randomization_test
from .diagnose import Diagnosis, diagnose, feature_evolution, renormalize_after_step, renormalize_filters_
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
from .viz import plot_filters, plot_hierarchy, plot_topk

__version__ = "0.1.0.dev0"

__all__ = [
    "ChannelStats",
    "ComparisonResult",
    "Crops",
    "Diagnosis",
    "EngineGuidedBackprop",
    "MiningResult",
    "NeuronEngineGuidedBackprop",
    "NeuronZFDeconvolution",
    "RandomizationResult",
    "ReceptiveField",
    "ReceptiveFieldError",
    "ReceptiveFieldTable",
    "Record",
    "ReverseRules",
    "ZFDeconvolution",
    "__version__",
    "compare_methods",
    "diagnose",
    "feature_evolution",
    "mine_topk",
    "plot_filters",
    "plot_hierarchy",
    "plot_topk",
    "project_records",
    "project_units",
    "randomization_test",
    "receptive_field",
    "receptive_field_table",
    "renormalize_after_step",
    "renormalize_filters_",
]
