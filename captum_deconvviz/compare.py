"""DeconvNet against Guided Backprop and friends: maps, agreement metrics, sanity checks.

* :func:`compare_methods`: attribution maps of several methods for the same inputs,
  with pairwise Spearman rank correlation (signed and absolute) and SSIM.
* :func:`randomization_test`: the model-parameter randomization test of Adebayo et
  al. (2018, "Sanity Checks for Saliency Maps"), cascading from the top layer down or
  one layer at a time.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    NeuronDeconvolution,
    NeuronGradient,
    NeuronGuidedBackprop,
    Saliency,
)
from torch import Tensor, nn

from ._checks import check_int, show
from ._forward import EvalMode, check_model, check_target, format_inputs, resolve_layer, run_forward
from ._guard import autograd_inside, check_finite, explain_shape_errors
from ._relu_census import relus_captum_misses
from ._tables import to_markdown
from .attr import EngineGuidedBackprop, NeuronEngineGuidedBackprop, NeuronZFDeconvolution, ZFDeconvolution

__all__ = [
    "METHODS",
    "ComparisonResult",
    "RandomizationResult",
    "compare_methods",
    "randomization_test",
    "spearman",
    "ssim",
]

#: Method names: (what they are, class for a class target, class for a neuron).
METHODS: dict[str, tuple[str, Any, Any]] = {
    "zf_deconv": ("Zeiler & Fergus DeconvNet (this package)", ZFDeconvolution, NeuronZFDeconvolution),
    "guided_backprop": ("Guided Backprop (captum.attr.GuidedBackprop)", GuidedBackprop, NeuronGuidedBackprop),
    "engine_guided_backprop": (
        "Guided Backprop through this package's engine (every ReLU caught)",
        EngineGuidedBackprop,
        NeuronEngineGuidedBackprop,
    ),
    "captum_deconvolution": ("captum.attr.Deconvolution", Deconvolution, NeuronDeconvolution),
    "saliency": ("gradient (captum.attr.Saliency, signed)", Saliency, NeuronGradient),
}


def _check_methods(methods: Sequence[str]) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, Sequence):
        raise TypeError(f"methods must be a list of method names, got {type(methods).__name__}")
    methods = list(methods)
    unknown = [m for m in methods if not isinstance(m, str) or m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods: unknown method(s) {unknown or methods!r}; choose from {sorted(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods lists a name twice: {methods}")
    return methods


def _attribute(
    name: str, model: nn.Module, inputs: Tensor, target: Any, layer: nn.Module | None, neuron_selector: Any
) -> Tensor:
    _, for_target, for_neuron = METHODS[name]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks")
        warnings.filterwarnings("ignore", message="Input Tensor")
        if layer is None:
            method = for_target(model)
            if name == "saliency":
                return method.attribute(inputs, target=target, abs=False).detach()
            return method.attribute(inputs, target=target).detach()
        method = for_neuron(model, layer)
        return method.attribute(inputs, neuron_selector).detach()


# --------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------


def _ranks(values: Tensor) -> Tensor:
    """Average ranks (ties share the mean of their positions), per row of ``[N, P]``."""
    order = values.argsort(dim=1, stable=True)
    sorted_values = values.gather(1, order)
    ranks = torch.empty_like(values, dtype=torch.float64)
    for row in range(values.shape[0]):
        _, inverse, counts = torch.unique_consecutive(sorted_values[row], return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()
        mean_rank = ends - (counts.double() + 1) / 2  # 0-based mean position of each tie group
        ranks[row, order[row]] = mean_rank[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per example between maps ``[N, ...]`` (ties get average ranks).

    Returns NaN for an example where either map is constant.
    """
    ra, rb = _ranks(a.flatten(1).double()), _ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(denominator > 0, (ra * rb).sum(1) / denominator, torch.full_like(denominator, math.nan))


def _gaussian(size: int, sigma: float) -> Tensor:
    """The 1-d Gaussian window (summing to 1); the 2-d window is its outer product with itself."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity per example between 2-d maps ``[N, H, W]`` scaled to [0, 1].

    Each map is min-max scaled to [0, 1] first (as in Adebayo et al.); the Gaussian
    window (11, sigma 1.5, shrunk to fit small maps) and constants follow Wang et al. (2004).
    """
    if a.dim() != 3 or a.shape != b.shape:
        raise ValueError(f"ssim needs two maps [N, H, W] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")

    def scale(x: Tensor) -> Tensor:
        x = x.double()
        low = x.flatten(1).min(1).values.view(-1, 1, 1)
        high = x.flatten(1).max(1).values.view(-1, 1, 1)
        return (x - low) / torch.where(high > low, high - low, torch.ones_like(high))

    a, b = scale(a)[:, None], scale(b)[:, None]
    size = min(window, a.shape[-2], a.shape[-1])
    size -= 1 - size % 2
    g = _gaussian(size, sigma).to(a.device)
    # The five local means in one pass of the separable window (rows, then columns): 2 x 11
    # taps a pixel instead of 121, in float64 where CPU convolutions have no fast path.
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    blurred = F.conv2d(F.conv2d(stacked, g.view(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5),
                       g.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)  # fmt: skip
    mu_a, mu_b, aa, bb, ab = blurred.split(1, dim=1)
    c1, c2 = 0.01**2, 0.03**2
    var_a = aa - mu_a**2
    var_b = bb - mu_b**2
    cov = ab - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.flatten(1).mean(1)


def _maps_2d(attribution: Tensor) -> tuple[Tensor, Tensor]:
    """Signed (channel sum) and absolute (channel sum of |.|) 2-d maps ``[N, H, W]``."""
    if attribution.dim() == 4:
        return attribution.sum(1), attribution.abs().sum(1)
    if attribution.dim() == 3:
        return attribution, attribution.abs()
    raise ValueError(f"attributions must be [N, C, H, W] or [N, H, W], got {tuple(attribution.shape)}")


def agreement(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """Spearman (signed maps), Spearman of absolute values, and SSIM of absolute maps, per example."""
    sa, aa = _maps_2d(a)
    sb, ab = _maps_2d(b)
    return {"spearman": spearman(sa, sb), "spearman_abs": spearman(aa, ab), "ssim": ssim(aa, ab)}


# --------------------------------------------------------------------------------------
# compare_methods.
# --------------------------------------------------------------------------------------


@dataclass
class ComparisonResult:
    """Maps of several methods for the same inputs, and their pairwise agreement.

    Attributes:
        inputs: the inputs ``[N, C, H, W]``.
        maps: method name -> attributions shaped like ``inputs``.
        metrics: ``(method_a, method_b)`` -> ``{"spearman", "spearman_abs", "ssim"}`` -> ``[N]``.
        target, layer, neuron_selector: what was attributed.
    """

    inputs: Tensor
    maps: dict[str, Tensor]
    metrics: dict[tuple[str, str], dict[str, Tensor]]
    target: Any = None
    layer: str | None = None
    neuron_selector: Any = None

    def table(self) -> str:
        """A Markdown table of the mean agreement of each pair over the examples."""
        rows = [
            [a, b, *(f"{float(np.nanmean(values[m].cpu().numpy())):.3f}" for m in ("spearman", "spearman_abs", "ssim"))]
            for (a, b), values in self.metrics.items()
        ]
        return to_markdown(["method A", "method B", "Spearman", "Spearman abs", "SSIM abs"], rows)

    if TYPE_CHECKING:  # deprecated; installed by viz, which draws results: plot_comparison(result, ...)

        def plot(self, *args: Any, **kwargs: Any) -> Any: ...


def _check_shapes(inputs: Tensor, target: Any) -> None:
    if isinstance(target, (list, Tensor)) and not isinstance(target, int):
        count = len(target) if isinstance(target, list) else (target.numel() if target.dim() > 0 else 1)
        if count not in (1, inputs.shape[0]):
            raise ValueError(f"target has {count} entries but inputs has {inputs.shape[0]} examples")


@autograd_inside
def compare_methods(
    model: nn.Module,
    inputs: Tensor,
    target: Any = None,
    layer: str | nn.Module | None = None,
    neuron_selector: Any = None,
    methods: Sequence[str] = ("zf_deconv", "guided_backprop", "captum_deconvolution", "saliency"),
) -> ComparisonResult:
    """Attribution maps of several methods for the same inputs, and how much they agree.

    Args:
        model: the network (not modified).
        inputs: images ``[N, C, H, W]``.
        target: the class (or one per example) for a classifier; required when the
            model returns more than one value per example and no ``layer`` is given.
        layer: attribute a neuron of this layer instead of a class (with ``neuron_selector``).
        neuron_selector: as in Captum's neuron methods; a ``LongTensor [N, k]`` works
            for this package's methods only.
        methods: names from :data:`METHODS`: ``"zf_deconv"``, ``"guided_backprop"``
            (Captum's), ``"engine_guided_backprop"`` (ours), ``"captum_deconvolution"``,
            ``"saliency"`` (the signed gradient).

    Returns:
        A :class:`ComparisonResult` with the maps, pairwise metrics (Spearman rank
        correlation of the channel-summed maps, of their absolute values, and SSIM of
        the absolute maps, per example); :func:`~captum_deconvviz.plot_comparison` draws it.

    Example:
        >>> from captum_deconvviz.zoo import load_default_model, default_sample
        >>> images = torch.stack([default_sample()[i][0] for i in range(4)])
        >>> result = compare_methods(load_default_model(), images, target=0)
        >>> print(result.table())  # doctest: +SKIP
    """
    model = check_model(model)
    names = _check_methods(methods)
    (inputs,) = format_inputs(inputs, model)
    layer_module = None
    layer_name = None
    if layer is not None:
        layer_name, layer_module = resolve_layer(model, layer)
        if neuron_selector is None:
            raise ValueError("neuron_selector is required with layer= (which neuron of the layer to attribute)")
        if target is not None:
            raise ValueError("give either target (a class) or layer with neuron_selector, not both")
    else:
        if neuron_selector is not None:
            raise ValueError("neuron_selector needs layer=")
        _check_shapes(inputs, target)
    check_finite(inputs, "inputs")
    # Every method sees the model in eval mode (buffers untouched), as every entry point does;
    # Captum's own methods run inside the same block, so they are compared on the same model.
    with EvalMode(model), explain_shape_errors(model, "inputs", inputs.shape):
        if layer is None:
            with torch.no_grad():
                check_target(run_forward(model, (inputs,)), target)
        maps = {name: _attribute(name, model, inputs, target, layer_module, neuron_selector) for name in names}
        _warn_if_captum_misses_relus(model, inputs, names)
    metrics = {(a, b): agreement(maps[a], maps[b]) for i, a in enumerate(names) for b in names[i + 1 :]}
    return ComparisonResult(inputs.detach(), maps, metrics, target, layer_name, neuron_selector)


#: Captum's methods that override ReLU gradients through hooks on ``nn.ReLU`` modules.
_CAPTUM_RELU_HOOKS = ("guided_backprop", "captum_deconvolution")


def _warn_if_captum_misses_relus(model: nn.Module, inputs: Tensor, names: Sequence[str]) -> None:
    """Warn when a Captum method in ``names`` keeps the plain gradient at some of the model's ReLUs."""
    hooked = [name for name in names if name in _CAPTUM_RELU_HOOKS]
    if not hooked:
        return
    census = relus_captum_misses(model, inputs[:1])
    if census.missed == 0:
        return
    ops = ", ".join(f"{name} x{count}" for name, count in sorted(census.names.items()))
    ours = {"guided_backprop": "'engine_guided_backprop'", "captum_deconvolution": "'zf_deconv'"}
    warnings.warn(
        f"{' and '.join(repr(n) for n in hooked)} (Captum) override ReLU gradients only at nn.ReLU modules: "
        f"{census.missed} of the {census.total} ReLU-type ops in this model's forward are not ({ops}), and keep "
        f"their plain gradient there, so those maps mix in Saliency. {' and '.join(ours[n] for n in hooked)} "
        "apply the rule at every op (docs/captum-differences.md).",
        UserWarning,
        stacklevel=4,  # past compare_methods and its autograd guard: the caller's line
    )


# --------------------------------------------------------------------------------------
# The randomization test.
# --------------------------------------------------------------------------------------


@dataclass
class RandomizationResult:
    """Similarity of each method's maps to the original model's, as layers are randomized.

    Attributes:
        steps: names of the layers randomized at each step (top layer first);
            in ``"cascading"`` mode step i has every layer up to ``steps[i]`` randomized.
        mode: ``"cascading"`` or ``"independent"``.
        similarity: method -> metric -> tensor ``[steps, N]``.
        original: method -> the original model's maps.
    """

    steps: list[str]
    mode: str
    similarity: dict[str, dict[str, Tensor]]
    original: dict[str, Tensor] = field(repr=False)

    def mean(self, method: str, metric: str = "spearman_abs") -> list[float]:
        """The curve: mean similarity over examples at each step."""
        return [float(np.nanmean(row.cpu().numpy())) for row in self.similarity[method][metric]]

    def table(self, metric: str = "spearman_abs") -> str:
        """A Markdown table of the mean ``metric`` per step and method."""
        names = list(self.similarity)
        curves = [self.mean(name, metric) for name in names]
        rows = [[step, *(f"{curve[i]:.3f}" for curve in curves)] for i, step in enumerate(self.steps)]
        return to_markdown(["randomized", *names], rows)

    if TYPE_CHECKING:  # deprecated; installed by viz, which draws results: plot_randomization(result, ...)

        def plot(self, *args: Any, **kwargs: Any) -> Any: ...


def _randomizable(model: nn.Module) -> list[str]:
    """Layers with weights, from the output back to the input (forward order reversed)."""
    names = [
        name
        for name, m in model.named_modules()
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))
    ]
    return names[::-1]


def _check_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """The layers to randomize: each a module of ``model`` with ``reset_parameters``."""
    if layers is None:
        return _randomizable(model)
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(f"layers must be a non-empty list of layer names, got {layers!r}")
    for name in layers:
        _, module = resolve_layer(model, name, argname="layers")
        if not callable(getattr(module, "reset_parameters", None)):
            raise ValueError(f"layers: {name!r} ({type(module).__name__}) has no reset_parameters() to randomize it")
    return list(layers)


@autograd_inside
def randomization_test(
    model: nn.Module,
    inputs: Tensor,
    target: Any,
    methods: Sequence[str] = ("zf_deconv", "guided_backprop", "saliency"),
    mode: Literal["cascading", "independent"] = "cascading",
    layers: Sequence[str] | None = None,
    random_state: int = 0,
    *,
    seed: int | None = None,
) -> RandomizationResult:
    """Model-parameter randomization test (Adebayo et al. 2018), top layer first.

    A method that explains the model should change when the model's weights are
    replaced by random ones. ``"cascading"`` re-initializes the layers one by one
    from the output down, keeping earlier ones random; ``"independent"`` re-initializes
    one layer at a time. Each step compares the maps to the original model's.

    Args:
        model: the network (not modified: each step works on a copy).
        inputs: images ``[N, C, H, W]``.
        target: the class (or one per example).
        methods: names from :data:`METHODS`.
        mode: ``"cascading"`` or ``"independent"``.
        layers: layer names to randomize, in order; default every module with its own
            weights (``reset_parameters``), from the output back to the input.
        random_state: seeds the re-initialization (step ``i`` uses ``random_state + i``).
        seed: deprecated spelling of ``random_state`` (``seed`` names the projection seed,
            ``"activation"`` or ``"one"``, elsewhere in the package); refused together
            with another ``random_state``.

    Returns:
        A :class:`RandomizationResult`; :func:`~captum_deconvviz.plot_randomization`
        draws the curves, ``.table()`` gives the numbers.

    Example:
        >>> from captum_deconvviz.zoo import load_default_model, default_sample
        >>> images = torch.stack([default_sample()[i][0] for i in range(4)])
        >>> test = randomization_test(load_default_model(), images, target=0, random_state=0)  # doctest: +SKIP
        >>> print(test.table())  # doctest: +SKIP
    """
    if seed is not None:
        check_int(seed, "seed")
        check_int(random_state, "random_state")
        if int(random_state) not in (0, int(seed)):  # 0 is the default: only then is seed= the one given
            raise ValueError(
                f"random_state={show(random_state)} and seed={show(seed)} both given: seed is the deprecated "
                "spelling of random_state; pass random_state only"
            )
        message = (
            "randomization_test(seed=...) is deprecated and will be removed in the next release: use random_state="
        )
        warnings.warn(message, DeprecationWarning, stacklevel=3)  # past autograd_inside's frame
        random_state = seed
    model = check_model(model)
    names = _check_methods(methods)
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    check_int(random_state, "random_state")
    (inputs,) = format_inputs(inputs, model)
    _check_shapes(inputs, target)
    check_finite(inputs, "inputs")
    steps = _check_layers(model, layers)
    with EvalMode(model), explain_shape_errors(model, "inputs", inputs.shape):
        with torch.no_grad():
            check_target(run_forward(model, (inputs,)), target)
        original = {m: _attribute(m, model, inputs, target, None, None) for m in names}
    similarity: dict[str, dict[str, list[Tensor]]] = {
        m: {"spearman": [], "spearman_abs": [], "ssim": []} for m in names
    }
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(random_state)
        cascade = copy.deepcopy(model).eval()  # our own copies: eval mode, as the original ran
        for step, name in enumerate(steps):
            current = cascade if mode == "cascading" else copy.deepcopy(model).eval()
            torch.manual_seed(random_state + step)
            dict(current.named_modules())[name].reset_parameters()
            for m in names:
                values = agreement(original[m], _attribute(m, current, inputs, target, None, None))
                for metric, value in values.items():
                    similarity[m][metric].append(value)
    finally:
        torch.random.set_rng_state(generator_state)
    stacked = {m: {k: torch.stack(v) for k, v in per.items()} for m, per in similarity.items()}
    return RandomizationResult(steps, mode, stacked, original)
