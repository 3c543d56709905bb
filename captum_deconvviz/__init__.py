"""captum-deconvviz: Zeiler & Fergus's DeconvNet, with true switch unpooling, for Captum."""

from ._exemplar_agreement import ExemplarAgreement, exemplar_agreement
from ._exemplar_records import ExemplarRow, class_unit_rows, exemplar_rows
from .attr import EngineGuidedBackprop, NeuronEngineGuidedBackprop, NeuronZFDeconvolution, ZFDeconvolution
from .compare import ComparisonResult, RandomizationResult, compare_methods, randomization_test
from .diagnose import (
    Diagnosis,
    FeatureEvolution,
    diagnose,
    renormalize_after_step,
    renormalize_filters_,
    track_features,
)
from .engine import ReverseRules
from .explorer import write_explorer
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
from .viz import (
    feature_evolution,
    hierarchy_channels,
    plot_class_histogram,
    plot_class_units,
    plot_comparison,
    plot_diagnosis,
    plot_exemplars,
    plot_feature_evolution,
    plot_filters,
    plot_hierarchy,
    plot_randomization,
    plot_selectivity,
    plot_topk,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ChannelStats",
    "ComparisonResult",
    "Crops",
    "Diagnosis",
    "EngineGuidedBackprop",
    "ExemplarAgreement",
    "ExemplarRow",
    "FeatureEvolution",
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
    "class_unit_rows",
    "compare_methods",
    "diagnose",
    "exemplar_agreement",
    "exemplar_rows",
    "feature_evolution",
    "hierarchy_channels",
    "mine_topk",
    "plot_class_histogram",
    "plot_class_units",
    "plot_comparison",
    "plot_diagnosis",
    "plot_exemplars",
    "plot_feature_evolution",
    "plot_filters",
    "plot_hierarchy",
    "plot_randomization",
    "plot_selectivity",
    "plot_topk",
    "project_records",
    "project_units",
    "randomization_test",
    "receptive_field",
    "receptive_field_table",
    "renormalize_after_step",
    "renormalize_filters_",
    "track_features",
    "write_explorer",
]
