"""Diagnostics after Zeiler & Fergus Sec. 4.1: dead filters, large filters, noisy and aliased layers.

ZF found, with their visualizations, that AlexNet's first layer mixed extremely high
and low frequencies with little mid-frequency coverage, had dead filters, and that its
stride-4 first layer produced aliasing artifacts; they shrank the first layer to 7x7
with stride 2 and renormalized filters whose RMS exceeded 0.1.

* dead filters: never active over the data (from the mining statistics);
* RMS norms: ``sqrt(mean(w**2))`` per filter, flagged above the ZF radius 0.1;
* high-frequency fraction of first-layer filters: the share of a filter's spectral
  energy (DC excluded) above half the Nyquist frequency; "mostly noise" above 0.6
  (white noise scores about 0.8, smooth edges and blobs about 0.2-0.4);
* aliasing of strided layers: the layer is run again with stride 1 on its own input;
  the share of that dense response's spectral energy (per channel, DC excluded)
  outside the band the strided output can represent (any axis above ``1 / (2 s)``
  cycles per pixel) is the energy that folds back into the output as aliases;
  undefined (NaN, "map too small") where the map is smaller than twice the stride.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from . import _datasource
from ._checks import check_bool, check_float
from ._diagnose_pass import (
    AliasingWatch,
    activity_sources,
    check_arguments,
    input_sources,
    recorded_aliasing,
    stream,
    stride_of,
)
from ._forward import check_model, on_model_device, resolve_layer
from ._tables import to_html, to_markdown
from .mining import mine_topk
from .mining_result import Crops, MiningResult

__all__ = [
    "Diagnosis",
    "FeatureEvolution",
    "LayerDiagnosis",
    "aliasing_score",
    "diagnose",
    "high_frequency_fraction",
    "renormalize_after_step",
    "renormalize_filters_",
    "track_features",
]

ZF_RADIUS = 0.1
NOISE_THRESHOLD = 0.6


def filter_rms(weight: Tensor) -> Tensor:
    """RMS of each filter ``[F, ...]``: ``sqrt(mean(w ** 2))``."""
    return weight.detach().flatten(1).pow(2).mean(1).sqrt()


def high_frequency_fraction(weight: Tensor, size: int = 32) -> Tensor:
    """Per filter, the share of spectral energy above half the Nyquist frequency (DC excluded).

    Each filter ``[C, kh, kw]`` is zero-padded to ``size x size`` and its 2-d spectrum
    summed over input channels.
    """
    w = weight.detach().double()
    spectrum = torch.fft.fft2(w, s=(size, size)).abs().pow(2).sum(1)  # [F, size, size]
    freq = torch.fft.fftfreq(size, dtype=torch.float64)
    radius = (freq[:, None] ** 2 + freq[None, :] ** 2).sqrt()
    spectrum[:, 0, 0] = 0.0
    total = spectrum.flatten(1).sum(1)
    high = spectrum[:, radius > 0.25].sum(1)
    return torch.where(total > 0, high / total, torch.zeros_like(total)).float()


def aliasing_score(dense: Tensor, stride: tuple[int, int]) -> Tensor:
    """Per channel, the share of a dense (stride-1) response's energy a stride would alias.

    Args:
        dense: responses ``[N, C, H, W]`` computed with stride 1.
        stride: the layer's stride ``(sy, sx)``.

    Returns:
        ``[C]``: energy at frequencies above ``1 / (2 s)`` on either axis over all
        energy, DC excluded, summed over images. NaN (undefined) when the map is
        smaller than ``2 s`` on an axis: the strided output then has a single sample
        there, and no band is left to alias into.
    """
    if dense.shape[2] < 2 * stride[0] or dense.shape[3] < 2 * stride[1]:
        return torch.full((dense.shape[1],), float("nan"))
    x = dense.detach().double()
    x = x - x.mean(dim=(2, 3), keepdim=True)
    # A real map's spectrum is symmetric: the half-spectrum, with the columns that stand for
    # two (all but DC and, for even widths, Nyquist) counted twice, gives the full sums.
    half = torch.fft.rfft2(x)
    spectrum = (half.real.square() + half.imag.square()).sum(0)  # [C, H, W // 2 + 1]
    twice = torch.full((spectrum.shape[2],), 2.0, dtype=torch.float64, device=spectrum.device)
    twice[0] = 1.0
    if x.shape[3] % 2 == 0:
        twice[-1] = 1.0
    spectrum = spectrum * twice
    fy = torch.fft.fftfreq(x.shape[2], dtype=torch.float64, device=x.device).abs()
    fx = torch.fft.rfftfreq(x.shape[3], dtype=torch.float64, device=x.device)
    outside = (fy[:, None] > 0.5 / stride[0]) | (fx[None, :] > 0.5 / stride[1])
    total = spectrum.flatten(1).sum(1)
    folded = (spectrum * outside).flatten(1).sum(1)
    return torch.where(total > 0, folded / total, torch.zeros_like(total)).float().cpu()


@dataclass
class LayerDiagnosis:
    """Diagnostics of one layer (see the module documentation for the definitions)."""

    name: str
    kind: str
    dead: Tensor
    rms: Tensor | None = None
    high_frequency: Tensor | None = None
    aliasing: Tensor | None = None
    stride: tuple[int, int] | None = None

    @property
    def large_filters(self) -> Tensor:
        """Filters whose RMS exceeds the ZF radius 0.1."""
        return self.rms > ZF_RADIUS if self.rms is not None else torch.zeros(0, dtype=torch.bool)

    @property
    def noisy_filters(self) -> Tensor:
        """First-layer filters that are mostly high-frequency noise."""
        if self.high_frequency is None:
            return torch.zeros(0, dtype=torch.bool)
        return self.high_frequency > NOISE_THRESHOLD

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layer": self.name, "type": self.kind, "channels": len(self.dead)}
        out["dead"] = int(self.dead.sum())
        if self.rms is not None:
            out["rms_max"] = float(self.rms.max())
            out["above_radius"] = int(self.large_filters.sum())
        if self.high_frequency is not None:
            out["high_frequency_mean"] = float(self.high_frequency.mean())
            out["noisy"] = int(self.noisy_filters.sum())
        if self.aliasing is not None:
            out["stride"] = self.stride
            out["aliasing_mean"] = float(self.aliasing.mean())
        return out


def _aliasing_cell(value: float | None) -> str:
    if value is None:
        return ""
    return "map too small" if np.isnan(value) else f"{value:.3f}"


@dataclass
class Diagnosis:
    """What :func:`diagnose` found, per layer, as a table and an HTML section.

    :func:`~captum_deconvviz.plot_diagnosis` draws it.
    """

    layers: list[LayerDiagnosis]
    images: int
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> LayerDiagnosis:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"layer {name!r} was not diagnosed; diagnosed: {[lay.name for lay in self.layers]}")

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        """The summary table: its header and one row of text per layer."""
        header = ["layer", "type", "channels", "dead", "RMS max", "> 0.1", "high-freq. mean", "noisy", "stride",
                  "aliasing"]  # fmt: skip
        rows = []
        for layer in self.layers:
            s = layer.summary()

            def cell(key: str, fmt: str = "{}", s: dict[str, Any] = s) -> str:
                return fmt.format(s[key]) if key in s and s[key] is not None else ""

            rows.append([
                str(s["layer"]), str(s["type"]), str(s["channels"]), str(s["dead"]), cell("rms_max", "{:.3f}"),
                cell("above_radius"), cell("high_frequency_mean", "{:.2f}"), cell("noisy"), cell("stride"),
                _aliasing_cell(s.get("aliasing_mean")),
            ])  # fmt: skip
        return header, rows

    def table(self) -> str:
        """A Markdown table of every layer's summary."""
        return to_markdown(*self._rows())

    def to_html(self) -> str:
        """The table as escaped HTML, for the report, followed by the notes (where the numbers come from)."""
        notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in self.notes)
        return to_html(*self._rows()) + notes

    if TYPE_CHECKING:  # deprecated; installed by viz, which draws results: plot_diagnosis(diagnosis, ...)

        def plot(self, *args: Any, **kwargs: Any) -> Any: ...


def _dense_response(module: nn.Module, inputs: Tensor) -> Tensor:
    """The module's response with stride 1 (same kernel, padding, dilation)."""
    if isinstance(module, nn.Conv2d):
        return F.conv2d(inputs, module.weight, module.bias, 1, module.padding, module.dilation, module.groups)
    if isinstance(module, nn.MaxPool2d):
        return F.max_pool2d(inputs, module.kernel_size, 1, module.padding, module.dilation)
    if isinstance(module, nn.AvgPool2d):
        return F.avg_pool2d(inputs, module.kernel_size, 1, module.padding)
    raise TypeError(f"no dense response for {type(module).__name__}")


def diagnose(
    model: nn.Module,
    data: Any,
    layers: str | nn.Module | Sequence[str | nn.Module] | None = None,
    batch_size: int = 64,
    max_images: int | None = 1000,
    progress: bool = False,
    *,
    result: MiningResult | None = None,
) -> Diagnosis:
    """Diagnose ``model`` as Zeiler & Fergus did AlexNet (Sec. 4.1).

    One forward pass per batch over at most ``max_images`` images collects what the
    data tells (dead filters, aliasing), stopped after the last layer it needs. Given
    the ``result`` of :func:`~captum_deconvviz.mine_topk` on the same model and data,
    dead filters come from its statistics wherever they answer exactly (a mined layer,
    or one linked to it by rectifiers, identity or a max-pool that sees every
    position), so the data is streamed only for what is left: aliasing, and the dead
    filters of layers the result cannot answer. ``deconvviz report`` works that way.

    Args:
        model: the network (not modified; runs in eval mode).
        data: images as :func:`~captum_deconvviz.mine_topk` takes them.
        layers: ``Conv2d`` (and pooling) modules or their names, or one of them;
            default every ``Conv2d`` and every strided pooling layer.
        batch_size: images per forward pass.
        max_images: use at most this many images (None: all) in the pass.
        progress: show a progress bar.
        result: a :class:`~captum_deconvviz.MiningResult` of ``model`` over all of
            ``data``; its dead filters then cover every mined image.

    Returns:
        A :class:`Diagnosis`: per layer, dead filters (never active over the data),
        filter RMS norms (flagged above 0.1), the first layer's high-frequency
        fractions and noisy filters, and the aliasing score of strided layers. Its
        ``notes`` say where the dead filters came from.

    Raises:
        ValueError: ``result`` was mined with another model or weights, or on data of
            another length, or holds one shard only; ``data`` holds NaN or Inf (the
            message gives the dataset indices of those images).

    Example:
        >>> from captum_deconvviz.zoo import load_default_model, default_sample
        >>> model, data = load_default_model(), default_sample()
        >>> diagnosis = diagnose(model, data)
        >>> print(diagnosis.table())  # doctest: +SKIP
        >>> mined = mine_topk(model, ["features.1", "features.9"], data)  # doctest: +SKIP
        >>> diagnosis = diagnose(model, data, result=mined)  # doctest: +SKIP
    """
    model = check_model(model)
    check_bool(progress, "progress")
    names, total = check_arguments(model, data, layers, batch_size, max_images, result)
    modules = dict(model.named_modules())
    dead: dict[str, Tensor] = {}
    sources: dict[str, str] = {}
    if result is not None:
        sources = activity_sources(model, names, result.layers, on_model_device(_datasource.fetch(data, [0]), model))
        dead = {name: result.stats(source).dead for name, source in sources.items()}
    if max_images is not None and total > max_images:
        if isinstance(data, Tensor):
            data = data[:max_images]
        else:
            data = torch.utils.data.Subset(data.dataset if hasattr(data, "sampler") else data, range(max_images))
    strided = {name: _score_of for name in names if stride_of(modules[name]) is not None}
    wanted = min(total, max_images) if max_images is not None else total
    recorded = recorded_aliasing(result, list(strided), wanted, batch_size)
    strided = {name: score for name, score in strided.items() if name not in recorded}
    missing = [name for name in names if name not in sources]
    active: dict[str, Tensor] = {}
    aliasing: dict[str, Tensor] = {}
    streamed = 0
    if missing or strided:
        active, aliasing, streamed = stream(model, missing, strided, data, batch_size, progress)
    aliasing.update(recorded)
    dead.update({name: active[name] == 0 for name in missing})
    notes = []
    if result is not None and sources:
        pairs = ", ".join(f"{name} from {source}" for name, source in sources.items())
        notes.append(f"Dead filters over the {result.num_images} mined images, from the mining statistics: {pairs}.")
    if missing:
        notes.append(f"Dead filters over {streamed} images: {', '.join(missing)}.")
    if recorded:
        notes.append(f"Aliasing over the first {wanted} images, measured while mining: {', '.join(recorded)}.")
    if strided:
        notes.append(f"Aliasing over {streamed} images.")
    images = streamed if missing or result is None else result.num_images
    return Diagnosis(_layer_diagnoses(modules, names, dead, aliasing), images, notes)


def watch_aliasing(
    model: nn.Module, data: Any, max_images: int | None = 1000, layers: Sequence[str] | None = None
) -> AliasingWatch:
    """A watch that scores aliasing while something else (mining) runs the model's forward passes.

    ``deconvviz report`` uses it to stream the dataset once: mine under the watch, record its
    scores on the result, and :func:`diagnose` with ``result=`` finds them instead of running
    its aliasing pass (it still runs one for the layers mining's forward did not reach). The
    forward passes must start at the first image, in order, with :func:`diagnose`'s batch
    size, as a fresh (not resumed) ``mine_topk`` on one process does.

    Args:
        model: the network.
        data: the images mining will stream (for their number).
        max_images: the images :func:`diagnose` will score (its ``max_images``).
        layers: the layers :func:`diagnose` will look at; default its default.

    Returns:
        An :class:`~captum_deconvviz._diagnose_pass.AliasingWatch` (a context manager).

    Example:
        >>> with watch_aliasing(model, data) as watch:  # doctest: +SKIP
        ...     result = mine_topk(model, layers, data, batch_size=64)
        >>> watch.record(result, batch_size=64)
        >>> diagnosis = diagnose(model, data, batch_size=64, result=result)  # no second pass
    """
    model = check_model(model)
    modules = dict(model.named_modules())
    names = [n for n in (layers or modules) if n and n in modules and stride_of(modules[n]) is not None]
    names = [n for n in names if isinstance(modules[n], (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    total = _datasource.length(data)
    wanted = min(total, max_images) if max_images is not None else total
    image = on_model_device(_datasource.fetch(data, [0]), model)
    return AliasingWatch(model, {name: _score_of for name in names}, wanted, input_sources(model, names, image))


def _layer_diagnoses(
    modules: dict[str, nn.Module], names: list[str], dead: dict[str, Tensor], aliasing: dict[str, Tensor]
) -> list[LayerDiagnosis]:
    """Per layer: its dead filters, filter RMS (convolutions), the first layer's frequencies, aliasing."""
    first_conv = next(
        (n for n in names if isinstance(modules[n], nn.Conv2d) and modules[n].in_channels in (1, 3)), None
    )
    entries = []
    for name in names:
        module = modules[name]
        # The diagnosis holds CPU tensors whatever the model's device: it is read and drawn there.
        entry = LayerDiagnosis(name, type(module).__name__, dead[name].cpu())
        if isinstance(module, nn.Conv2d):
            entry.rms = filter_rms(module.weight).cpu()
            if name == first_conv:
                entry.high_frequency = high_frequency_fraction(module.weight).cpu()
        if name in aliasing:
            entry.stride, entry.aliasing = stride_of(module), aliasing[name].cpu()
        entries.append(entry)
    return entries


def _score_of(module: nn.Module, inputs: Tensor) -> Tensor:
    """The aliasing score of one batch: the module's dense response, and the energy its stride folds."""
    return aliasing_score(_dense_response(module, inputs), stride_of(module))  # type: ignore[arg-type]


def renormalize_filters_(model: nn.Module, radius: float = ZF_RADIUS, layers: Iterable[nn.Module] | None = None) -> int:
    """Zeiler & Fergus's fix: scale down every conv filter whose RMS exceeds ``radius`` to ``radius``.

    Args:
        model: modified in place (the trailing underscore says so).
        radius: the RMS cap (ZF: 0.1).
        layers: the modules to treat, submodules of ``model``; default every ``Conv2d``
            of ``model``.

    Returns:
        How many filters were renormalized.

    Raises:
        TypeError: an entry of ``layers`` is not a convolution module.
        ValueError: an entry of ``layers`` is not a submodule of ``model`` (its filters
            would change and the count would describe another model).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.fill_(1.0)
        >>> renormalize_filters_(net, radius=0.1)
        4
    """
    model = check_model(model)
    radius = check_float(radius, "radius", above=0.0)
    chosen: list[nn.modules.conv._ConvNd] = []
    if layers is None:
        chosen = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    else:
        for i, module in enumerate(layers):
            if not isinstance(module, nn.modules.conv._ConvNd):
                raise TypeError(f"layers[{i}] must be a convolution module, got {type(module).__name__}")
            try:
                _, own = resolve_layer(model, module)
            except ValueError:
                raise ValueError(
                    f"layers[{i}] is a {type(module).__name__} that is not a submodule of model: its filters would "
                    "change, not the model's; pass convolutions of model itself (e.g. model.features[0])"
                ) from None
            chosen.append(own)  # type: ignore[arg-type]
    count = 0
    with torch.no_grad():
        for conv in chosen:
            weight: Tensor = conv.weight
            rms = filter_rms(weight)
            # A filter scaled to the radius comes back a rounding error above it: it is at the radius,
            # and a second call (renormalize_after_step's next step) must neither count nor scale it.
            over = rms > radius * (1 + 4 * torch.finfo(weight.dtype).eps)
            scale = torch.where(over, radius / rms, torch.ones_like(rms))
            weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
            count += int(over.sum())
    return count


def renormalize_after_step(optimizer: Optimizer, model: nn.Module, radius: float = ZF_RADIUS) -> Any:
    """Apply :func:`renormalize_filters_` after every ``optimizer.step()``.

    Returns:
        The hook handle; ``handle.remove()`` stops it.

    Example:
        >>> handle = renormalize_after_step(optimizer, model)  # doctest: +SKIP
    """

    def renormalize(*_: Any) -> None:
        renormalize_filters_(model, radius)

    return optimizer.register_step_post_hook(renormalize)


@dataclass
class FeatureEvolution:
    """The strongest record of each channel at each training checkpoint (ZF Fig. 4).

    Attributes:
        layer: the layer followed.
        channels: the channels followed.
        patches: per checkpoint, the input patch of each channel's strongest record
            (:class:`~captum_deconvviz.Crops` ``[channels, 1, C, h, w]``).
        projections: per checkpoint, that record's DeconvNet projection (the same shape).
    """

    layer: str
    channels: list[int]
    patches: list[Crops]
    projections: list[Crops]


def track_features(
    checkpoints: Sequence[nn.Module], data: Any, layer: str, channels: Sequence[int]
) -> FeatureEvolution:
    """Follow channels across training: at each checkpoint, mine their strongest record and project it.

    Args:
        checkpoints: the model at successive training steps (modules of one architecture).
        data: images, as :func:`~captum_deconvviz.mine_topk` takes them.
        layer: the layer to follow.
        channels: which channels.

    Returns:
        A :class:`FeatureEvolution`; :func:`~captum_deconvviz.plot_feature_evolution`
        draws it (ZF Fig. 4).

    Example:
        >>> from captum_deconvviz.zoo import ZFNetCIFAR, default_sample
        >>> images = torch.stack([default_sample()[i][0] for i in range(16)])
        >>> evolution = track_features([ZFNetCIFAR().eval(), ZFNetCIFAR().eval()], images, "features.4", [0, 3])
        >>> len(evolution.projections), tuple(evolution.projections[0].images.shape[:2])
        (2, (2, 1))
    """
    if isinstance(checkpoints, nn.Module) or not isinstance(checkpoints, Sequence) or not checkpoints:
        raise ValueError("checkpoints must be a non-empty list of models (the training checkpoints, in order)")
    not_a_list = isinstance(channels, Tensor) and channels.dim() != 1
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Iterable) or not_a_list:
        raise TypeError(f"channels must be a list of channel indices, got {type(channels).__name__}")
    channels = list(channels)
    if not channels:
        raise ValueError("channels is empty: name at least one channel to follow")
    for i, model in enumerate(checkpoints):
        model = check_model(model, f"checkpoints[{i}]")
        try:
            resolve_layer(model, layer)
        except ValueError as err:  # each checkpoint must have the layer: one architecture
            raise ValueError(
                f"checkpoints[{i}] has no layer {layer!r} ({err}): pass checkpoints of one architecture"
            ) from None
    patches, projections = [], []
    for model in checkpoints:
        result = mine_topk(model, layer, data, k=1, progress=False)
        patches.append(result.patches(data, layer, channels))
        projections.append(result.projections(model, data, layer, channels))
    return FeatureEvolution(layer, [int(c) for c in channels], patches, projections)


if TYPE_CHECKING:  # deprecated; installed by viz: plot_feature_evolution(track_features(...), ...)

    def feature_evolution(*args: Any, **kwargs: Any) -> Any: ...
