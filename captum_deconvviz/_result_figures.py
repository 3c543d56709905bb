"""Figures of results: comparisons, randomization tests, diagnoses, feature evolution.

:mod:`~captum_deconvviz.compare` and :mod:`~captum_deconvviz.diagnose` compute and return
data; these functions draw it (they are exported by :mod:`~captum_deconvviz.viz` and the
package). The results' old ``.plot()`` methods, and ``feature_evolution``, are installed
here as deprecated spellings for one release.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor, nn

from ._checks import check_bool, check_float
from ._figures import (
    attribution_cell,
    blank,
    check_cell_style,
    check_image_function,
    check_indices,
    check_type,
    deprecated,
    display_image,
    finish,
    new_figure,
    normalize_projection,
)
from .compare import ComparisonResult, RandomizationResult
from .diagnose import NOISE_THRESHOLD, ZF_RADIUS, Diagnosis, FeatureEvolution, track_features

__all__ = ["feature_evolution", "plot_comparison", "plot_diagnosis", "plot_feature_evolution", "plot_randomization"]


def plot_comparison(
    result: ComparisonResult,
    examples: Sequence[int] | None = None,
    method: str = "heat_map",
    sign: str = "absolute_value",
    outlier_perc: float = 2,
    display: Callable[[Tensor], Tensor] | None = None,
    cell_inches: float = 1.6,
    use_pyplot: bool = True,
) -> tuple[Figure, np.ndarray]:
    """Side-by-side panels of a comparison (rows: examples; columns: input, then each method).

    Args:
        result: a :class:`~captum_deconvviz.ComparisonResult` from
            :func:`~captum_deconvviz.compare_methods`.
        examples: which examples: indices into ``result.inputs`` (negative ones count
            from the end), or one index; default the first 4.
        method, sign, outlier_perc: passed to Captum's ``visualize_image_attr``.
        display: maps an input to [0, 1] RGB for the first column (default min-max).
        cell_inches: panel size.
        use_pyplot: as in Captum.

    Returns:
        ``(fig, axes)`` with axes ``[examples, 1 + methods]``.

    Raises:
        ValueError: an example index out of range; ``method`` or ``sign`` not
            Captum's (``sign="all"`` cannot mask or scale).
        TypeError: ``result`` is not a ``ComparisonResult``, ``display`` is not a
            function, or a number or flag has the wrong type.

    Example:
        >>> comparison = compare_methods(model, images, target=labels)  # doctest: +SKIP
        >>> fig, axes = plot_comparison(comparison, display=denormalize, use_pyplot=False)  # doctest: +SKIP
    """
    check_type(result, "result", ComparisonResult, "from compare_methods")
    count = len(result.inputs)
    rows = check_indices(examples, "examples", count) if examples is not None else list(range(min(4, count)))
    check_cell_style(method, sign)
    check_float(outlier_perc, "outlier_perc", minimum=0.0, below=100.0)
    check_image_function(display, "display")
    check_float(cell_inches, "cell_inches", above=0.0)
    check_bool(use_pyplot, "use_pyplot")
    names = list(result.maps)
    fig = new_figure(use_pyplot, ((len(names) + 1) * cell_inches, len(rows) * cell_inches + 0.3))
    axes = np.array(fig.subplots(len(rows), len(names) + 1, squeeze=False))
    for r, example in enumerate(rows):
        image = display_image(result.inputs[example], display)
        axes[r, 0].imshow(image, interpolation="nearest")
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        if r == 0:
            axes[r, 0].set_title("input", fontsize=8)
        for c, name in enumerate(names, start=1):
            attribution_cell(axes[r, c], fig, result.maps[name][example], image, method=method, sign=sign,
                             outlier_perc=outlier_perc)  # fmt: skip
            if r == 0:
                axes[r, c].set_title(name.replace("_", " "), fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.05, hspace=0.05)
    finish(fig, use_pyplot)
    return fig, axes


def plot_randomization(
    result: RandomizationResult, metrics: Sequence[str] = ("spearman_abs", "ssim"), use_pyplot: bool = True
) -> tuple[Figure, np.ndarray]:
    """Similarity curves of a randomization test, as in Adebayo et al. (2018), Fig. 2.

    Args:
        result: a :class:`~captum_deconvviz.RandomizationResult` from
            :func:`~captum_deconvviz.randomization_test`.
        metrics: one panel per metric (``"spearman"``, ``"spearman_abs"``, ``"ssim"``),
            one line per method; each must be one the result holds.
        use_pyplot: as in Captum.

    Returns:
        ``(fig, axes)`` with one axis per metric.

    Raises:
        ValueError: ``metrics`` is empty or names a metric the result does not hold.
        TypeError: ``result`` is not a ``RandomizationResult``.

    Example:
        >>> test = randomization_test(model, images, target=labels)  # doctest: +SKIP
        >>> fig, axes = plot_randomization(test, use_pyplot=False)  # doctest: +SKIP
    """
    check_type(result, "result", RandomizationResult, "from randomization_test")
    metrics = _metric_list(result, metrics)
    check_bool(use_pyplot, "use_pyplot")
    fig = new_figure(use_pyplot, (4.2 * len(metrics), 3.4))
    axes = np.atleast_1d(np.array(fig.subplots(1, len(metrics))))
    x = np.arange(len(result.steps))
    for ax, metric in zip(axes, metrics, strict=True):
        for name in result.similarity:
            ax.plot(x, result.mean(name, metric), marker="o", label=name.replace("_", " "))
        ax.set_xticks(x)
        ax.set_xticklabels(result.steps, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(-0.1 if metric.startswith("spearman") else 0, 1.05)
        ax.set_ylabel(metric.replace("_", " "))
        ax.axhline(0, color="0.8", lw=0.8)
        ax.set_title(f"{result.mode} randomization", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    finish(fig, use_pyplot)
    return fig, axes


def _metric_list(result: RandomizationResult, metrics: Any) -> list[str]:
    """``metrics`` (one name or several) as a non-empty list of metrics every method of ``result`` has."""
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, Sequence) or not metrics:
        raise ValueError(f"metrics must be a non-empty list of metric names such as ['spearman_abs', 'ssim'], "
                         f"got {metrics!r}")  # fmt: skip
    known = sorted(set.intersection(*(set(curves) for curves in result.similarity.values())) if result.similarity
                   else set())  # fmt: skip
    for metric in metrics:
        if not isinstance(metric, str) or metric not in known:
            raise ValueError(f"metrics: {metric!r} is not a metric of this result; choose from {known}")
    return list(metrics)


def _first_layer_panels(diagnosis: Diagnosis, rms_ax: Any, frequency_ax: Any) -> None:
    """The first layer's filter RMS (sorted) and the histogram of its high-frequency fractions."""
    first = next((layer for layer in diagnosis.layers if layer.high_frequency is not None), None)
    if first is None or first.rms is None or first.high_frequency is None:
        return
    rms_ax.bar(range(len(first.rms)), first.rms.sort(descending=True).values.numpy(), color="#357")
    rms_ax.axhline(ZF_RADIUS, color="k", ls="--", lw=1, label="ZF radius 0.1")
    rms_ax.set_title(f"{first.name}: filter RMS", fontsize=9)
    rms_ax.legend(fontsize=7)
    frequency_ax.hist(first.high_frequency.numpy(), bins=np.linspace(0, 1, 21), color="#575")
    frequency_ax.axvline(NOISE_THRESHOLD, color="k", ls="--", lw=1, label="noise threshold")
    frequency_ax.set_title(f"{first.name}: high-frequency fraction", fontsize=9)
    frequency_ax.legend(fontsize=7)


def _aliasing_panel(diagnosis: Diagnosis, ax: Any) -> None:
    """The aliased energy fraction of each strided layer (labelled where the map is too small)."""
    strided = [
        (f"{layer.name}\n/{layer.stride[0]}", float(layer.aliasing.mean()))
        for layer in diagnosis.layers
        if layer.aliasing is not None and layer.stride is not None
    ]
    scores = [score for _, score in strided]
    ax.bar(range(len(strided)), np.nan_to_num(scores, nan=0.0), color="#a60")
    for i, score in enumerate(scores):
        if np.isnan(score):
            ax.text(i, 0.02, "map too\nsmall", ha="center", fontsize=6)
    ax.set_xticks(range(len(strided)), [label for label, _ in strided], fontsize=7)
    ax.set_ylabel("aliased energy fraction")


def plot_diagnosis(diagnosis: Diagnosis, use_pyplot: bool = True) -> tuple[Figure, np.ndarray]:
    """Four panels: dead filters per layer, first-layer RMS and frequency content, aliasing.

    Args:
        diagnosis: a :class:`~captum_deconvviz.Diagnosis` from :func:`~captum_deconvviz.diagnose`.
        use_pyplot: as in Captum.

    Returns:
        ``(fig, axes)`` with 4 axes: the fraction of dead filters per layer, the first
        layer's filter RMS against the ZF radius 0.1, its high-frequency fractions
        against the noise threshold, and the aliased energy of each strided layer.

    Raises:
        TypeError: ``diagnosis`` is not a ``Diagnosis``.

    Example:
        >>> fig, axes = plot_diagnosis(diagnose(model, data), use_pyplot=False)  # doctest: +SKIP
    """
    check_type(diagnosis, "diagnosis", Diagnosis, "from diagnose")
    check_bool(use_pyplot, "use_pyplot")
    fig = new_figure(use_pyplot, (13, 3.2))
    axes = np.array(fig.subplots(1, 4))
    names = [layer.name for layer in diagnosis.layers]
    dead = [float(layer.dead.float().mean()) for layer in diagnosis.layers]
    axes[0].bar(range(len(names)), dead, color="#b33")
    axes[0].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    axes[0].set_ylabel("fraction of dead filters")
    axes[0].set_ylim(0, max(0.05, 1.15 * max(dead, default=0.0)))
    if not any(dead):
        axes[0].text(0.5, 0.5, "no dead filters", transform=axes[0].transAxes, ha="center", fontsize=9)
    _first_layer_panels(diagnosis, axes[1], axes[2])
    _aliasing_panel(diagnosis, axes[3])
    fig.tight_layout()
    finish(fig, use_pyplot)
    return fig, axes


def plot_feature_evolution(
    evolution: FeatureEvolution,
    labels: Sequence[str] | None = None,
    denormalize: Callable[[Tensor], Tensor] | None = None,
    use_pyplot: bool = True,
) -> tuple[Figure, np.ndarray]:
    """The strongest patch and projection of each channel across training (ZF Fig. 4).

    Args:
        evolution: from :func:`~captum_deconvviz.diagnose.track_features`.
        labels: a column title per checkpoint (e.g. ``"epoch 5"``), one per checkpoint.
        denormalize: maps images to [0, 1] RGB.
        use_pyplot: as in Captum.

    Returns:
        ``(fig, axes)`` with axes ``[channels, checkpoints, 2]`` (projection, patch).

    Raises:
        ValueError: ``labels`` does not have one title per checkpoint.
        TypeError: ``evolution`` is not a ``FeatureEvolution``, or ``denormalize`` is
            not a function.

    Example:
        >>> evolution = track_features(checkpoints, data, "features.4", [0, 3])  # doctest: +SKIP
        >>> fig, axes = plot_feature_evolution(evolution, labels=["epoch 1", "epoch 5"])  # doctest: +SKIP
    """
    check_type(evolution, "evolution", FeatureEvolution, "from track_features")
    channels, count = evolution.channels, len(evolution.patches)
    if labels is not None:
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise TypeError(f"labels must be a list of {count} column titles, one per checkpoint, "
                            f"got {type(labels).__name__}")  # fmt: skip
        if len(labels) != count:
            raise ValueError(f"labels has {len(labels)} titles for {count} checkpoints; give one per checkpoint")
        labels = [str(label) for label in labels]
    check_image_function(denormalize, "denormalize")
    check_bool(use_pyplot, "use_pyplot")
    width = count * 1.4 + 0.6
    fig = new_figure(use_pyplot, (width, len(channels) * 0.75 + 0.4))
    axes = np.array(fig.subplots(len(channels), 2 * count, squeeze=False)).reshape(len(channels), count, 2)
    for col, (crops, projections) in enumerate(zip(evolution.patches, evolution.projections, strict=True)):
        for row in range(len(channels)):
            for side in (0, 1):
                blank(axes[row, col, side])
            if not bool(crops.mask[row, 0].any()):
                continue
            axes[row, col, 0].imshow(normalize_projection(projections.images[row, 0]), interpolation="nearest")
            shown = display_image(crops.images[row, 0], denormalize, crops.mask[row, 0])
            axes[row, col, 1].imshow(shown, interpolation="nearest")
    fig.subplots_adjust(left=0.6 / width, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.08)
    for col in range(count):
        # One title centred over each (projection, patch) pair.
        left, right = axes[0, col, 0].get_position(), axes[0, col, 1].get_position()
        title = labels[col] if labels is not None else f"checkpoint {col}"
        fig.text((left.x0 + right.x1) / 2, left.y1 + 0.01, title, ha="center", va="bottom", fontsize=8)
    for row, channel in enumerate(channels):
        axes[row, 0, 0].set_ylabel(f"#{channel}", fontsize=7, rotation=0, ha="right", va="center")
    finish(fig, use_pyplot)
    return fig, axes


# --------------------------------------------------------------------------------------
# Deprecated spellings, kept for one release. Results used to draw themselves; now viz
# draws them. The old methods are installed here, at import, rather than written in
# compare/diagnose, whose layer is below this one: importing viz there would point upward.
# The package's __init__ imports viz, so they are always in place.
# --------------------------------------------------------------------------------------


def _deprecated_plot(draw: Callable[..., tuple[Figure, np.ndarray]], owner: str) -> Callable[..., Any]:
    def plot(self: Any, *args: Any, **kwargs: Any) -> tuple[Figure, np.ndarray]:
        deprecated(f"{owner}.plot(...): use captum_deconvviz.{draw.__name__}(result, ...)")
        return draw(self, *args, **kwargs)

    plot.__doc__ = f"Deprecated: use :func:`~captum_deconvviz.{draw.__name__}` (the same arguments after the result)."
    return plot


def feature_evolution(
    checkpoints: Sequence[nn.Module],
    data: Any,
    layer: str,
    channels: Sequence[int],
    labels: Sequence[str] | None = None,
    denormalize: Callable[[Tensor], Tensor] | None = None,
    use_pyplot: bool = True,
) -> tuple[Figure, np.ndarray]:
    """Deprecated: ``plot_feature_evolution(track_features(checkpoints, data, layer, channels), ...)``."""
    deprecated("feature_evolution(...): use plot_feature_evolution(track_features(checkpoints, data, layer, channels))")
    evolution = track_features(checkpoints, data, layer, channels)
    return plot_feature_evolution(evolution, labels, denormalize, use_pyplot)


for _owner, _draw in ((ComparisonResult, plot_comparison), (RandomizationResult, plot_randomization),
                      (Diagnosis, plot_diagnosis)):  # fmt: skip
    setattr(_owner, "plot", _deprecated_plot(_draw, _owner.__name__))  # noqa: B010 (mypy: a method is assigned)
# `from captum_deconvviz.diagnose import feature_evolution` keeps working; the module, not the
# package attribute `diagnose` (which is the function of that name).
setattr(sys.modules[track_features.__module__], "feature_evolution", feature_evolution)  # noqa: B010
