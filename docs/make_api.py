"""Write docs/api.md from the package's docstrings: ``python docs/make_api.py``.

tests/test_docs.py checks that docs/api.md is up to date.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import captum_deconvviz
from captum_deconvviz import cropped, data, engine, report, zoo
from captum_deconvviz.diagnose import watch_aliasing

SECTIONS = {
    "Attribution (Captum classes)": [
        "ZFDeconvolution", "NeuronZFDeconvolution", "EngineGuidedBackprop", "NeuronEngineGuidedBackprop",
        "project_units", "project_records",
    ],
    "Receptive fields": ["receptive_field", "receptive_field_table", "ReceptiveField", "ReceptiveFieldTable",
                         "ReceptiveFieldError"],
    "Mining": ["mine_topk", "MiningResult", "Record", "ChannelStats", "Crops"],
    "Figures": [
        "plot_filters", "plot_topk", "plot_hierarchy", "hierarchy_channels", "plot_comparison", "plot_randomization",
        "plot_diagnosis", "plot_feature_evolution", "exemplar_rows", "ExemplarRow", "plot_exemplars",
        "plot_class_histogram", "plot_selectivity", "class_unit_rows", "plot_class_units",
    ],
    "Comparison and sanity checks": [
        "compare_methods", "ComparisonResult", "randomization_test", "RandomizationResult", "exemplar_agreement",
        "ExemplarAgreement",
    ],
    "Diagnostics": [
        "diagnose", "Diagnosis", "renormalize_filters_", "renormalize_after_step", "track_features", "FeatureEvolution",
        "feature_evolution",
    ],
    "Engine": ["ReverseRules"],
    "Explorer and report": ["write_explorer"],
}  # fmt: skip
EXTRA = {
    "Engine": [engine.activation_rule, cropped.cropped_plan],
    "Diagnostics": [watch_aliasing],
    "Explorer and report": [report.write_report],
    "Default model and data": [
        zoo.load_default_model,
        zoo.default_transform,
        zoo.denormalize,
        zoo.default_sample,
        zoo.default_model_info,
        zoo.ZFNetCIFAR,
        data.ImageFiles,
        data.ZipImages,
        data.UnreadableImageError,
        data.load_cifar10,
    ],
}


def _entry(obj: object, name: str) -> str:
    doc = inspect.getdoc(obj) or ""
    try:
        signature = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        signature = ""
    kind = "class" if inspect.isclass(obj) else "def"
    lines = [f"### `{name}`", "", "```text", f"{kind} {name}{signature}", "```", "", doc, ""]
    if inspect.isclass(obj):
        own = [
            base
            for base in reversed(obj.__mro__)
            if base is obj or (base.__module__.startswith("captum_deconvviz") and not base.__name__.startswith("_"))
        ]  # a mixin's too
        members = {attr: member for base in own for attr, member in vars(base).items()}
        for attr, member in sorted(members.items()):
            if attr.startswith("_") or (not callable(member) and not isinstance(member, (property, classmethod))):
                continue
            func = member.__func__ if isinstance(member, classmethod) else member
            if isinstance(func, property):
                summary = (inspect.getdoc(func) or "").split("\n\n")[0]
                lines += [f"- `{name}.{attr}` (property): {summary}"]
                continue
            summary = (inspect.getdoc(func) or "").split("\n\n")[0].replace("\n", " ")
            try:
                sig = str(inspect.signature(func)).replace("(self, ", "(").replace("(self)", "()")
            except (TypeError, ValueError):
                sig = "(...)"
            lines += [f"- `{name}.{attr}{sig}`: {summary}"]
        lines.append("")
    return "\n".join(lines)


def render() -> str:
    parts = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/make_api.py`; every public name is importable from",
        "`captum_deconvviz` unless its module is given.",
        "",
    ]
    for section, names in SECTIONS.items():
        parts += [f"## {section}", ""]
        parts += [_entry(getattr(captum_deconvviz, name), name) for name in names]
        for obj in EXTRA.get(section, []):
            parts.append(_entry(obj, f"{obj.__module__}.{obj.__qualname__}"))
    for section in EXTRA.keys() - SECTIONS.keys():
        parts += [f"## {section}", ""]
        parts += [_entry(obj, f"{obj.__module__}.{obj.__qualname__}") for obj in EXTRA[section]]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    target = Path(__file__).with_name("api.md")
    target.write_text(render())
    print(f"wrote {target}", file=sys.stderr)
