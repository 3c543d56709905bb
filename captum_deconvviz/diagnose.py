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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.optim import Optimizer

from . import _datasource
from ._diagnose_pass import activity_sources, stream
from ._forward import check_model, resolve_layer
from .mining import mine_topk, model_fingerprint
from .mining_result import MiningResult

__all__ = [
    "Diagnosis",
    "LayerDiagnosis",
    "aliasing_score",
    "diagnose",
    "feature_evolution",
    "high_frequency_fraction",
    "renormalize_after_step",
    "renormalize_filters_",
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
    """What :func:`diagnose` found, per layer, with a table, a figure and an HTML section."""

    layers: list[LayerDiagnosis]
    images: int
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> LayerDiagnosis:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"layer {name!r} was not diagnosed; diagnosed: {[lay.name for lay in self.layers]}")

    def table(self) -> str:
        """A Markdown table of every layer's summary."""
        lines = [
            "| layer | type | channels | dead | RMS max | > 0.1 | high-freq. mean | noisy | stride | aliasing |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for layer in self.layers:
            s = layer.summary()

            def cell(key: str, fmt: str = "{}", s: dict[str, Any] = s) -> str:
                return fmt.format(s[key]) if key in s and s[key] is not None else ""

            lines.append(
                f"| {s['layer']} | {s['type']} | {s['channels']} | {s['dead']} | {cell('rms_max', '{:.3f}')} | "
                f"{cell('above_radius')} | {cell('high_frequency_mean', '{:.2f}')} | {cell('noisy')} | "
                f"{cell('stride')} | {_aliasing_cell(s.get('aliasing_mean'))} |"
            )
        return "\n".join(lines)

    def to_html(self) -> str:
        """The table as escaped HTML, for the report, followed by the notes (where the numbers come from)."""
        rows = self.table().splitlines()
        head = [c.strip() for c in rows[0].strip("|").split("|")]
        body = [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]
        return (
            "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
            + "</tbody></table>"
            + "".join(f'<p class="note">{html.escape(note)}</p>' for note in self.notes)
        )  # fmt: skip

    def plot(self, use_pyplot: bool = True) -> tuple[Figure, np.ndarray]:
        """Dead filters per layer, first-layer RMS and frequency content, aliasing per strided layer."""
        from .viz import _figure, _finish

        fig = _figure(use_pyplot, (13, 3.2))
        axes = np.array(fig.subplots(1, 4))
        names = [layer.name for layer in self.layers]
        dead = [float(layer.dead.float().mean()) for layer in self.layers]
        axes[0].bar(range(len(names)), dead, color="#b33")
        axes[0].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        axes[0].set_ylabel("fraction of dead filters")
        axes[0].set_ylim(0, max(0.05, 1.15 * max(dead, default=0.0)))
        if not any(dead):
            axes[0].text(0.5, 0.5, "no dead filters", transform=axes[0].transAxes, ha="center", fontsize=9)
        first = next((layer for layer in self.layers if layer.high_frequency is not None), None)
        if first is not None and first.rms is not None:
            axes[1].bar(range(len(first.rms)), first.rms.sort(descending=True).values.numpy(), color="#357")
            axes[1].axhline(ZF_RADIUS, color="k", ls="--", lw=1, label="ZF radius 0.1")
            axes[1].set_title(f"{first.name}: filter RMS", fontsize=9)
            axes[1].legend(fontsize=7)
            axes[2].hist(first.high_frequency.numpy(), bins=np.linspace(0, 1, 21), color="#575")
            axes[2].axvline(NOISE_THRESHOLD, color="k", ls="--", lw=1, label="noise threshold")
            axes[2].set_title(f"{first.name}: high-frequency fraction", fontsize=9)
            axes[2].legend(fontsize=7)
        strided = [layer for layer in self.layers if layer.aliasing is not None]
        scores = [float(layer.aliasing.mean()) for layer in strided]
        axes[3].bar(range(len(strided)), np.nan_to_num(scores, nan=0.0), color="#a60")
        for i, score in enumerate(scores):
            if np.isnan(score):
                axes[3].text(i, 0.02, "map too\nsmall", ha="center", fontsize=6)
        axes[3].set_xticks(range(len(strided)), [f"{lay.name}\n/{lay.stride[0]}" for lay in strided], fontsize=7)
        axes[3].set_ylabel("aliased energy fraction")
        fig.tight_layout()
        _finish(fig, use_pyplot)
        return fig, axes


def _stride_of(module: nn.Module) -> tuple[int, int] | None:
    stride = getattr(module, "stride", None)
    if stride is None:
        return None
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    return stride if max(stride) > 1 and len(stride) == 2 else None


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
    layers: Sequence[str] | None = None,
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
        layers: ``Conv2d`` (and pooling) module names; default every ``Conv2d``
            and every strided pooling layer.
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
            another length, or holds one shard only.

    Example:
        >>> from captum_deconvviz.zoo import load_default_model, default_sample
        >>> model, data = load_default_model(), default_sample()
        >>> diagnosis = diagnose(model, data)
        >>> print(diagnosis.table())  # doctest: +SKIP
        >>> mined = mine_topk(model, ["features.1", "features.9"], data)  # doctest: +SKIP
        >>> diagnosis = diagnose(model, data, result=mined)  # doctest: +SKIP
    """
    model = check_model(model)
    _datasource.check_data(data)
    if layers is None:
        layers = [
            name
            for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) or (isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and _stride_of(m) is not None)
        ]
    names = [resolve_layer(model, layer, argname="layers")[0] for layer in layers]
    if not names:
        raise ValueError("the model has no Conv2d or strided pooling layer to diagnose")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_images is not None and (not isinstance(max_images, int) or isinstance(max_images, bool) or max_images < 1):
        raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
    total = _datasource.length(data)
    if total == 0:
        raise ValueError("data is empty: there is nothing to diagnose")
    if result is not None:
        _check_result(result, model, total)
    modules = dict(model.named_modules())
    sources: dict[str, str] = {}
    if result is not None:
        sources = activity_sources(model, names, result.layers, _datasource.fetch(data, [0]))
    if max_images is not None and total > max_images:
        if isinstance(data, Tensor):
            data = data[:max_images]
        else:
            data = torch.utils.data.Subset(data.dataset if hasattr(data, "sampler") else data, range(max_images))
    strided = {name: _score_of for name in names if _stride_of(modules[name]) is not None}
    missing = [name for name in names if name not in sources]
    active: dict[str, Tensor] = {}
    aliasing: dict[str, Tensor] = {}
    streamed = 0
    if missing or strided:
        active, aliasing, streamed = stream(model, missing, strided, data, batch_size, progress)
    first_conv = next(
        (n for n in names if isinstance(modules[n], nn.Conv2d) and modules[n].in_channels in (1, 3)), None
    )
    results = []
    for name in names:
        module = modules[name]
        dead = result.stats(sources[name]).dead if name in sources else active[name] == 0  # type: ignore[union-attr]
        entry = LayerDiagnosis(name, type(module).__name__, dead)
        if isinstance(module, nn.Conv2d):
            entry.rms = filter_rms(module.weight)
            if name == first_conv:
                entry.high_frequency = high_frequency_fraction(module.weight)
        if name in aliasing:
            entry.stride, entry.aliasing = _stride_of(module), aliasing[name]
        results.append(entry)
    notes = []
    if sources:
        pairs = ", ".join(f"{name} from {source}" for name, source in sources.items())
        notes.append(f"Dead filters over the {result.num_images} mined images, from the mining statistics: {pairs}.")  # type: ignore[union-attr]
    if missing:
        notes.append(f"Dead filters over {streamed} images: {', '.join(missing)}.")
    if aliasing:
        notes.append(f"Aliasing over {streamed} images.")
    images = streamed if missing or result is None else result.num_images
    return Diagnosis(results, images, notes)


def _check_result(result: Any, model: nn.Module, total: int) -> None:
    if not isinstance(result, MiningResult):
        raise TypeError(f"result must be a MiningResult (from mine_topk), got {type(result).__name__}")
    if result.fingerprint != model_fingerprint(model):
        raise ValueError("result was mined with another model (or other weights): mine this model, or leave result out")
    length = result.meta.get("dataset_length")
    if length is not None and length != total:
        raise ValueError(f"result was mined on data of {length} images, but data has {total}")
    if result.num_images != total:
        raise ValueError(
            f"result covers {result.num_images} of the {total} images (one shard?): merge the shards with "
            "MiningResult.merge, or leave result out"
        )


def _score_of(module: nn.Module, inputs: Tensor) -> Tensor:
    """The aliasing score of one batch: the module's dense response, and the energy its stride folds."""
    return aliasing_score(_dense_response(module, inputs), _stride_of(module))  # type: ignore[arg-type]


def renormalize_filters_(model: nn.Module, radius: float = ZF_RADIUS, layers: Iterable[nn.Module] | None = None) -> int:
    """Zeiler & Fergus's fix: scale down every conv filter whose RMS exceeds ``radius`` to ``radius``.

    Args:
        model: modified in place (the trailing underscore says so).
        radius: the RMS cap (ZF: 0.1).
        layers: the modules to treat; default every ``Conv2d`` of ``model``.

    Returns:
        How many filters were renormalized.
    """
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    count = 0
    with torch.no_grad():
        for module in layers if layers is not None else model.modules():
            if not isinstance(module, nn.modules.conv._ConvNd):
                continue
            rms = filter_rms(module.weight)
            scale = torch.where(rms > radius, radius / rms, torch.ones_like(rms))
            module.weight.mul_(scale.view(-1, *([1] * (module.weight.dim() - 1))))
            count += int((rms > radius).sum())
    return count


def renormalize_after_step(optimizer: Optimizer, model: nn.Module, radius: float = ZF_RADIUS) -> Any:
    """Apply :func:`renormalize_filters_` after every ``optimizer.step()``.

    Returns:
        The hook handle; ``handle.remove()`` stops it.

    Example:
        >>> handle = renormalize_after_step(optimizer, model)  # doctest: +SKIP
    """
    return optimizer.register_step_post_hook(lambda *_: renormalize_filters_(model, radius))


def feature_evolution(
    checkpoints: Sequence[nn.Module],
    data: Any,
    layer: str,
    channels: Sequence[int],
    labels: Sequence[str] | None = None,
    denormalize: Callable[[Tensor], Tensor] | None = None,
    use_pyplot: bool = True,
) -> tuple[Figure, np.ndarray]:
    """The strongest patch and projection of each channel across training (ZF Fig. 4).

    Args:
        checkpoints: the model at successive training steps (modules of one architecture).
        data: images.
        layer: the layer to follow.
        channels: which channels (rows).
        labels: a column title per checkpoint (e.g. ``"epoch 5"``).
        denormalize: maps images to [0, 1] RGB.
        use_pyplot: as in Captum.

    Returns:
        ``(fig, axes)`` with axes ``[channels, checkpoints, 2]`` (projection, patch).
    """
    from .viz import _blank, _display, _figure, _finish, normalize_projection

    if not checkpoints:
        raise ValueError("checkpoints is empty")
    width = len(checkpoints) * 1.4 + 0.6
    fig = _figure(use_pyplot, (width, len(channels) * 0.75 + 0.4))
    axes = np.array(fig.subplots(len(channels), 2 * len(checkpoints), squeeze=False)).reshape(
        len(channels), len(checkpoints), 2
    )
    for col, model in enumerate(checkpoints):
        result = mine_topk(model, layer, data, k=1, progress=False)
        crops = result.patches(data, layer, list(channels))
        projections = result.projections(model, data, layer, list(channels)).images
        for row in range(len(channels)):
            for side in (0, 1):
                _blank(axes[row, col, side])
            if not bool(crops.mask[row, 0].any()):
                continue
            axes[row, col, 0].imshow(normalize_projection(projections[row, 0]), interpolation="nearest")
            shown = _display(crops.images[row, 0], denormalize, crops.mask[row, 0])
            axes[row, col, 1].imshow(shown, interpolation="nearest")
    fig.subplots_adjust(left=0.6 / width, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.08)
    for col in range(len(checkpoints)):
        # One title centred over each (projection, patch) pair.
        left, right = axes[0, col, 0].get_position(), axes[0, col, 1].get_position()
        title = labels[col] if labels is not None else f"checkpoint {col}"
        fig.text((left.x0 + right.x1) / 2, left.y1 + 0.01, title, ha="center", va="bottom", fontsize=8)
    for row, channel in enumerate(channels):
        axes[row, 0, 0].set_ylabel(f"#{channel}", fontsize=7, rotation=0, ha="right", va="center")
    _finish(fig, use_pyplot)
    return fig, axes
