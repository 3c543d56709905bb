"""The zoo sweep: which ConvNets each public operation supports, checked against oracles.

One source for the full benchmark (``benchmarks/architecture_sweep.py``, which imports
this module) and its CI subset (``tests/test_architecture_sweep.py``). For a random-init
model in eval mode it checks:

* **attribution**: ``ZFDeconvolution(model, activations="gradient")`` against zennit's
  ``DeconvNet`` composite, an independent implementation that rectifies ``nn.ReLU``
  modules only (hence ``activations="gradient"``: other activations keep their
  gradient on both sides). Norm-based relative error per image. Where the model calls
  ReLU functionally, zennit cannot see it; the check then reruns zennit on a ``torch.fx``
  rewrite with ReLU modules, or reports the difference in a note;
* **receptive fields** of an early, a middle and the last stage output (and single
  channels of a concatenation): ``receptive_field(...).clipped_box`` per unit against
  the gradient probe ``measure_support``. Where ``global_via`` is not empty (global
  statistics or gates), the probe with global paths open must see all the layer's map
  reaches (the whole input unless a stride leaves border pixels unseen) and
  the probe with them detached must equal the local field; where it is empty, a
  detached probe that differs from the open one is a global path the analysis missed;
* **mining**: a verified ``mine_topk`` run, then ``patches`` and ``projections`` of the
  strongest channel's records.

Every check is recorded, never raised: a clear error raised by captum_deconvviz itself
is a *refusal*; an exception from inside torch, numpy or another library, or a field
that differs from the probe, is a *failure*.

Parts of the receptive-field API of issue 12 (``channel=``, ``detach_global=``,
``global_via``, ``"layer[i]"`` names of tuple outputs) are detected at import: where
missing, those checks are reported as skipped and the model cannot be "supported".
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import captum_deconvviz
from captum_deconvviz import ZFDeconvolution, mine_topk, receptive_field
from captum_deconvviz.receptive_field import ReceptiveFieldError, measure_support

PACKAGE_DIR = Path(captum_deconvviz.__file__).resolve().parent
REL_TOL = 1e-5

Box = tuple[int, ...] | None


def accepts(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes a parameter called ``name``."""
    return name in inspect.signature(func).parameters


#: The receptive-field API of issue 12, feature by feature (False until it lands).
NEW_API = {
    "receptive_field(channel=)": accepts(receptive_field, "channel"),
    "measure_support(channel=)": accepts(measure_support, "channel"),
    "measure_support(detach_global=)": accepts(measure_support, "detach_global"),
}


# --------------------------------------------------------------------------------------
# Outcomes.
# --------------------------------------------------------------------------------------

#: Kinds of outcome, best first. "differs": a documented, legitimate difference.
PASS, DIFFERS, SKIPPED, REFUSED, WRONG, FAILED = "pass", "differs", "skipped", "refused", "wrong", "failed"


def classify(err: BaseException) -> tuple[str, str]:
    """``(REFUSED | FAILED, "error: Type: message [file:line]")`` for an exception.

    A refusal is raised on purpose by captum_deconvviz (a ``raise`` statement in the
    package, or its ``ReceptiveFieldError``); anything else (raised inside torch, numpy,
    timm, or a bug such as a ``KeyError`` in the package) is a failure.
    """
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where, deliberate = "?", False
    if tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename).resolve()
        where = f"{path.name}:{tb.tb_lineno}"
        inside = path.is_relative_to(PACKAGE_DIR)
        if inside:
            where = f"{path.relative_to(PACKAGE_DIR.parent)}:{tb.tb_lineno}"
        raised_here = linecache.getline(str(path), tb.tb_lineno).strip().startswith("raise")
        deliberate = inside and (raised_here or isinstance(err, ReceptiveFieldError))
    text = " ".join(str(err).split())
    if len(text) > 300:
        text = text[:297] + "..."
    kind = REFUSED if deliberate and not isinstance(err, (KeyError, IndexError, AttributeError)) else FAILED
    return kind, f"error: {type(err).__name__}: {text} [{where}]"


@dataclass
class Outcome:
    """One check: its kind (see :func:`classify`), what it checked and why it ended so."""

    kind: str
    what: str
    message: str = ""
    seconds: float = 0.0
    value: float | None = None  # attribution: the max relative error
    global_via: tuple[str, ...] | None = None  # receptive fields: as reported (None: not in the API)
    note: str = ""
    bound: bool = False  # receptive fields: the analysis gave a documented bound (checked by containment)


def error_outcome(err: BaseException, what: str, start: float) -> Outcome:
    """The outcome of a check that raised ``err`` (see :func:`classify`)."""
    kind, message = classify(err)
    return Outcome(kind, what, message, time.perf_counter() - start)


@dataclass
class ModelReport:
    """Everything the sweep learnt about one model."""

    name: str
    family: str
    source: str
    size: int
    build_s: float = 0.0
    forward_s: float = 0.0
    seconds: float = 0.0
    attribution: Outcome | None = None
    fields: list[Outcome] = field(default_factory=list)
    mining: Outcome | None = None
    notes: list[str] = field(default_factory=list)
    error: str = ""
    not_run: str = ""  # why the plain model fails at this input size (not the package's fault)

    @property
    def key(self) -> str:
        """The sweep's name for the model: timm's, or ``tv/NAME`` for torchvision."""
        return self.name if self.source == "timm" else f"tv/{self.name}"

    def outcomes(self) -> list[Outcome]:
        """Every check that was run, attribution first."""
        return [o for o in (self.attribution, *self.fields, self.mining) if o is not None]

    @property
    def status(self) -> str:
        """``"supported"``, ``"refused"``, ``"FAILED"``, ``"incomplete"`` (API missing) or
        ``"not run"`` (the model itself rejects the input size)."""
        if self.not_run:
            return "not run"
        kinds = {o.kind for o in self.outcomes()}
        if self.error or kinds & {WRONG, FAILED}:
            return "FAILED"
        if kinds & {REFUSED, SKIPPED}:
            return "refused" if REFUSED in kinds else "incomplete"
        return "supported"

    @property
    def silently_wrong(self) -> int:
        """Fields the analysis returned without an error that differ from the probe."""
        return sum(o.kind == WRONG for o in self.fields)

    def first_problem(self) -> Outcome | None:
        """The first check that did not pass (worst kind first)."""
        for kind in (WRONG, FAILED, REFUSED, SKIPPED, DIFFERS):
            for o in self.outcomes():
                if o.kind == kind:
                    return o
        return None


# --------------------------------------------------------------------------------------
# Models and inputs.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model of the sweep.

    Attributes:
        name: the torchvision or timm model name.
        family: the architecture family, for the table.
        source: ``"torchvision"`` or ``"timm"``.
        size: input side of the full sweep.
        small: input side of the quick sweep and CI (the smallest the model runs at).
        layers: early, middle and last stage outputs; empty: from timm's ``feature_info``.
            ``"name[i]"`` is element ``i`` of a tuple-valued output.
        channel_layer: a layer whose channels have different fields; None: the middle
            concatenation output found by :func:`concat_outputs`; "": none.
        kwargs: extra constructor arguments.
    """

    name: str
    family: str
    source: str
    size: int = 160
    small: int = 64
    layers: tuple[str, ...] = ()
    channel_layer: str | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Profile:
    """How hard to look: input size, units per probe, layers, channels, images."""

    name: str
    small: bool  # use ModelSpec.small instead of ModelSpec.size
    units: int  # probed units per layer
    layers: int  # 2: early and middle; 3: also the last stage
    channels: int  # single channels checked on the channel layer
    mining_layers: int
    images: int  # mined images
    size: int | None = None  # input side for every model, instead of the spec's

    def input_size(self, spec: ModelSpec) -> int:
        """The input side this profile uses for ``spec``."""
        return self.size or (spec.small if self.small else spec.size)


PROFILES = {
    "full": Profile("full", small=False, units=6, layers=3, channels=3, mining_layers=2, images=6),
    "quick": Profile("quick", small=True, units=4, layers=3, channels=2, mining_layers=1, images=4),
    "ci": Profile("ci", small=True, units=4, layers=2, channels=2, mining_layers=1, images=4),
}


def build(spec: ModelSpec) -> nn.Module:
    """The random-init model in eval mode (seed 0; nothing is downloaded)."""
    torch.manual_seed(0)
    kwargs = dict(spec.kwargs)
    if spec.source == "torchvision":
        import torchvision

        return torchvision.models.get_model(spec.name, weights=None, **kwargs).eval()
    import timm

    return timm.create_model(spec.name, pretrained=False, **kwargs).eval()


_SAMPLE: Tensor | None = None


def sample_images(n: int, size: int) -> Tensor:
    """``n`` shipped CIFAR-10 test images (normalized), resized to ``size`` (bilinear)."""
    global _SAMPLE
    if _SAMPLE is None or len(_SAMPLE) < n:
        from captum_deconvviz.zoo import default_sample

        data = default_sample()
        _SAMPLE = torch.stack([data[i][0] for i in range(max(n, 8))])
    return F.interpolate(_SAMPLE[:n], size=(size, size), mode="bilinear", align_corners=False).contiguous()


_ELEMENT = re.compile(r"^(.*?)((?:\[\d+\])*)$")


def split_layer(name: str) -> tuple[str, tuple[int, ...]]:
    """``"stage3[0]"`` -> ``("stage3", (0,))``."""
    match = _ELEMENT.match(name)
    assert match is not None
    return match.group(1), tuple(int(i) for i in re.findall(r"\d+", match.group(2)))


def layer_outputs(model: nn.Module, names: Sequence[str], x: Tensor) -> dict[str, Any]:
    """The outputs of ``names`` (``"name[i]"`` picks an element) for input ``x``, no grad."""
    modules = dict(model.named_modules())
    raw: dict[str, Any] = {}
    hooks = []
    for base in {split_layer(n)[0] for n in names}:
        hooks.append(modules[base].register_forward_hook(lambda _m, _i, out, base=base: raw.setdefault(base, out)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    outs = {}
    for name in names:
        base, index = split_layer(name)
        value = raw[base]
        for i in index:
            value = value[i]
        outs[name] = value
    return outs


class _CatRecorder(TorchFunctionMode):
    """Keeps every tensor that ``torch.cat`` returns during a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in ("cat", "concat", "concatenate") and isinstance(out, Tensor):
            self.outputs.append(out)
        return out


def concat_outputs(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the modules whose output is a concatenation (channels of different fields)."""
    found: list[str] = []
    recorder = _CatRecorder()

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, Tensor) and out.dim() == 4 and any(out is t for t in recorder.outputs):
                found.append(name)

        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad(), recorder:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(found))


def pick_layers(spec: ModelSpec, model: nn.Module, x: Tensor, count: int) -> list[str]:
    """Early, middle (and last) stage outputs: the spec's, or timm's ``feature_info``."""
    if spec.layers:
        names = list(spec.layers)
    else:
        info = [d["module"] for d in getattr(model, "feature_info", []) if d["module"]]
        names = [info[0], info[len(info) // 2], info[-1]]
        outs = layer_outputs(model, names, x)
        names = [n if isinstance(outs[n], Tensor) else f"{n}[0]" for n in names]
    return list(dict.fromkeys(names if count >= 3 else [names[0], names[1]]))


def probe_units(output_size: Sequence[int], count: int) -> list[tuple[int, int]]:
    """Centre, corners, their neighbours: the units whose boxes the probe checks."""
    h, w = output_size
    cy, cx = h // 2, w // 2
    candidates = [(cy, cx), (0, 0), (h - 1, w - 1), (1, 1), (cy + 1, cx + 1), (0, w - 1)]
    units = [u for u in dict.fromkeys(candidates) if 0 <= u[0] < h and 0 <= u[1] < w]
    return units[:count]


# --------------------------------------------------------------------------------------
# Attribution.
# --------------------------------------------------------------------------------------


#: Modules that ``activations="rectify"`` gives the ReLU rule, for zennit's layer map.
RELU_LIKE_MODULES = (
    nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish,
    nn.Softplus, nn.PReLU, nn.RReLU,
)  # fmt: skip


def relu_like_modules() -> tuple[type[nn.Module], ...]:
    """:data:`RELU_LIKE_MODULES` and timm's own GELU modules (one ``F.gelu`` call each)."""
    try:
        from timm.layers import activations
    except ImportError:
        return RELU_LIKE_MODULES
    extra = tuple(getattr(activations, name) for name in ("GELU", "GELUTanh") if hasattr(activations, name))
    return RELU_LIKE_MODULES + extra


def zennit_deconvnet(model: nn.Module, x: Tensor, targets: Sequence[int], relu_like: bool = False) -> Tensor:
    """zennit's DeconvNet attribution of ``targets`` (one per row of ``x``).

    Args:
        relu_like: also give the ReLU rule to the modules of :func:`relu_like_modules`
            (the oracle of ``activations="rectify"`` where activations are such modules).
    """
    from zennit.composites import DeconvNet, LayerMapComposite
    from zennit.rules import ReLUDeconvNet

    x = x.detach().clone().requires_grad_(True)
    composite = DeconvNet()
    if relu_like:  # zennit 0.4 has no layer_map argument: extend the composite's own map
        composite = LayerMapComposite([*composite.layer_map, (relu_like_modules(), ReLUDeconvNet())])
    with composite.context(model) as modified:
        out = modified(x)
        seed = torch.zeros_like(out)
        seed[torch.arange(len(targets)), torch.as_tensor(targets)] = 1.0
        (grad,) = torch.autograd.grad(out, x, seed)
    return grad


def plain_gradient(model: nn.Module, x: Tensor, targets: Sequence[int]) -> Tensor:
    """The gradient of the target logits: what the DeconvNet must differ from where ReLUs rectify."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out[torch.arange(len(targets)), torch.as_tensor(targets)].sum(), x)
    return grad


def relu_calls(model: nn.Module, x: Tensor) -> tuple[int, int]:
    """``(ReLU ops the engine routes, calls of nn.ReLU modules)`` in one forward pass."""
    from captum_deconvviz.engine import ReverseRules, activation_rule

    calls = [0]
    hooks = [
        m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        with torch.enable_grad(), ReverseRules("zf", activations="gradient") as mode:
            model(x.detach().clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    relu_rule = activation_rule("relu")
    routed = sum(n for op, n in mode.routed.items() if activation_rule(op, "zf", "gradient") == relu_rule)
    return routed, calls[0]


def relative_error(ours: Tensor, oracle: Tensor) -> float:
    """Max over rows of ``||ours - oracle|| / ||oracle||`` (inf where the oracle is all zero)."""
    diff = (ours - oracle).flatten(1).norm(dim=1)
    scale = oracle.flatten(1).norm(dim=1)
    errors = torch.where(scale > 0, diff / scale.clamp_min(1e-300), torch.full_like(diff, float("inf")))
    return float(errors.max())


def _rectify_check(model: nn.Module, x: Tensor, targets: Sequence[int], rel_tol: float) -> str:
    """``activations="rectify"`` against zennit with ReLU-like modules rectified, as a note."""
    try:
        ours = ZFDeconvolution(model, activations="rectify").attribute(x, target=list(targets))
        error = relative_error(ours, zennit_deconvnet(model, x, targets, relu_like=True))
    except Exception as err:
        return f"activations='rectify' not compared ({classify(err)[1]})"
    verdict = "equals" if error <= rel_tol else "differs from"
    return f"activations='rectify' {verdict} zennit with ReLU-like modules rectified (rel. err {error:.1e})"


def check_attribution(model: nn.Module, x: Tensor, targets: Sequence[int], rel_tol: float = REL_TOL) -> Outcome:
    """``ZFDeconvolution(activations="gradient")`` against zennit's ``DeconvNet``."""
    start = time.perf_counter()
    try:
        ours = ZFDeconvolution(model, activations="gradient").attribute(x, target=list(targets))
    except Exception as err:
        return error_outcome(err, "attribution", start)
    try:
        oracle = zennit_deconvnet(model, x, targets)
    except Exception as err:
        return Outcome(SKIPPED, "attribution", f"oracle: {classify(err)[1]}", time.perf_counter() - start)
    error = relative_error(ours, oracle)
    outcome = Outcome(PASS, "attribution", value=error)
    if relative_error(ours, plain_gradient(model, x, targets)) <= rel_tol:
        outcome.note = "no ReLU: equals the plain gradient; " + _rectify_check(model, x, targets, rel_tol)
    if not error <= rel_tol:
        try:
            routed, module_calls = relu_calls(model, x[:1])
        except Exception as err:
            routed, module_calls = 0, 0
            outcome.note = f"ReLU calls not counted ({classify(err)[1]})"
        if routed > module_calls:
            hidden = f"{routed - module_calls} of {routed} ReLU calls are functional, unseen by zennit"
            try:
                from oracles import with_activation_modules

                error2 = relative_error(ours, zennit_deconvnet(with_activation_modules(model), x, targets))
            except Exception as err:
                outcome = Outcome(DIFFERS, "attribution", f"{hidden}; no fx rewrite ({classify(err)[1]})", value=error)
            else:
                kind = PASS if error2 <= rel_tol else WRONG
                note = f"{hidden}: oracle = zennit on a torch.fx rewrite with ReLU modules"
                outcome = Outcome(kind, "attribution", "" if kind == PASS else note, value=error2, note=note)
        else:
            outcome = Outcome(WRONG, "attribution", f"relative error {error:.2e} > {rel_tol:g}", value=error)
    outcome.seconds = time.perf_counter() - start
    return outcome


# --------------------------------------------------------------------------------------
# Receptive fields.
# --------------------------------------------------------------------------------------


def _expected(rf: Any, units: Sequence[tuple[int, int]]) -> list[Box]:
    boxes: list[Box] = []
    for unit in units:
        box = tuple(rf.clipped_box(*unit))
        boxes.append(None if box[0] >= box[2] or box[1] >= box[3] else box)
    return boxes


def _inside(inner: Box, outer: Box) -> bool:
    if inner is None:
        return True
    if outer is None:
        return False
    return inner[0] >= outer[0] and inner[1] >= outer[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _first_difference(
    units: Sequence[tuple[int, int]], expected: Sequence[Box], measured: Sequence[Box], bound: bool
) -> tuple[tuple[int, int], Box, Box] | None:
    for unit, want, got in zip(units, expected, measured, strict=True):
        if not (_inside(got, want) if bound else got == want):
            return unit, want, got
    return None


def check_field(
    model: nn.Module,
    layer: str,
    input_shape: tuple[int, int, int],
    units: Sequence[tuple[int, int]],
    channel: int | None = None,
    widest: Any = None,
) -> Outcome:
    """One layer's (or one channel's) analytic field against the probe, unit by unit.

    Args:
        widest: the layer's field, when checking a channel: the channel's field must
            not be larger.
    """
    start = time.perf_counter()
    what = layer if channel is None else f"{layer} ch {channel}"

    is_bound = False

    def done(kind: str, message: str = "", **extra: Any) -> Outcome:
        return Outcome(kind, what, message, time.perf_counter() - start, bound=is_bound, **extra)

    if channel is not None and not (NEW_API["receptive_field(channel=)"] and NEW_API["measure_support(channel=)"]):
        return done(SKIPPED, "needs receptive_field(channel=) and measure_support(channel=)")
    by_channel = {} if channel is None else {"channel": channel}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rf = receptive_field(model, layer, input_shape, **by_channel)
        except Exception as err:
            kind, message = classify(err)
            if kind == REFUSED:
                try:
                    measure_support(model, layer, input_shape, units[:1], **by_channel)
                    message += " (the probe answers)"
                except Exception as probe_err:
                    message += f" (the probe fails too: {type(probe_err).__name__})"
            return done(kind, message)
    global_via = getattr(rf, "global_via", None)
    is_bound = not rf.exact
    note = ""
    if rf.method != "analytic":
        reasons = "; ".join(dict.fromkeys(str(w.message) for w in caught))
        note = f"probe fallback: {reasons}"[:200]
    if widest is not None and any(a > b for a, b in zip(rf.size, widest.size, strict=True)):
        return done(WRONG, f"channel field {rf.size} is larger than the layer's {widest.size}", global_via=global_via)
    expected = _expected(rf, units)
    whole: Box = (0, 0, *input_shape[1:])
    try:
        opened = measure_support(model, layer, input_shape, units, **by_channel)
        detached = None
        if NEW_API["measure_support(detach_global=)"]:
            detached = measure_support(model, layer, input_shape, units, detach_global=True, **by_channel)
    except Exception as err:
        kind, message = classify(err)
        return done(kind, f"probe: {message}", global_via=global_via, note=note)
    bound = is_bound
    for probe, measured in (("open", opened), ("detached", detached)):
        pairs = zip(units, expected, measured or expected, strict=True)
        blind = next((u for u, want, got in pairs if got is None and want is not None), None)
        if blind is not None:
            return done(
                FAILED,
                f"{probe} probe: no support at unit {blind}, where the analysis has a field: the probe is suspect",
                global_via=global_via,
                note=note,
            )
    if global_via:
        # Through a global path a unit sees every pixel the layer's map reaches: the hull of
        # its corner units' fields (the whole input, unless a stride leaves border pixels unseen).
        h, w = rf.output_size
        first, last = tuple(rf.clipped_box(0, 0)), tuple(rf.clipped_box(h - 1, w - 1))
        reach = (*first[:2], *last[2:])
        for unit, got in zip(units, opened, strict=True):
            if not _inside(reach, got):
                return done(
                    WRONG,
                    f"global_via {global_via} but the open probe sees {got}, not the map's reach {reach}, "
                    f"at unit {unit}",
                    global_via=global_via,
                )
        if detached is None:
            return done(SKIPPED, "needs measure_support(detach_global=)", global_via=global_via, note=note)
        diff = _first_difference(units, expected, detached, bound)
        if diff is not None:
            unit, want, got = diff
            return done(WRONG, f"unit {unit}: local field {want}, detached probe {got}", global_via=global_via)
        return done(PASS, global_via=global_via, note=note)
    diff = _first_difference(units, expected, opened, bound)
    if diff is not None:
        unit, want, got = diff
        missed = " (the probe sees the whole input)" if got == whole and want != whole else ""
        return done(WRONG, f"unit {unit}: analytic {want}, probe {got}{missed}", global_via=global_via, note=note)
    if detached is not None and list(detached) != list(opened):
        unit, got, local = next((u, a, b) for u, a, b in zip(units, opened, detached, strict=True) if a != b)
        return done(
            WRONG,
            f"unit {unit}: the probe finds a global path (open {got}, detached {local}) not in global_via",
            global_via=global_via,
        )
    return done(PASS, global_via=global_via, note=note)


def check_fields(
    model: nn.Module,
    layers: Sequence[str],
    channel_layer: str,
    input_shape: tuple[int, int, int],
    profile: Profile,
) -> list[Outcome]:
    """The layers' fields, then single channels of ``channel_layer`` (if any)."""
    x = torch.zeros(1, *input_shape)
    names = list(dict.fromkeys([*layers, *([channel_layer] if channel_layer else [])]))
    try:
        outs = layer_outputs(model, names, x)
    except Exception as err:
        return [error_outcome(err, "layer outputs", time.perf_counter())]
    results: list[Outcome] = []
    for layer in layers:
        out = outs[layer]
        if not isinstance(out, Tensor) or out.dim() != 4:
            results.append(Outcome(SKIPPED, layer, f"output is {type(out).__name__}, not [N, C, H, W]"))
            continue
        results.append(check_field(model, layer, input_shape, probe_units(out.shape[2:], profile.units)))
    if channel_layer:
        out = outs[channel_layer]
        channels = out.shape[1]
        picks = [0, channels - 1] if profile.channels <= 2 else [0, channels // 2, channels - 1]
        widest = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.suppress(Exception):  # reported by the layer check, if it is one
                widest = receptive_field(model, channel_layer, input_shape)
        units = probe_units(out.shape[2:], profile.units)
        for c in dict.fromkeys(picks):
            results.append(check_field(model, channel_layer, input_shape, units, channel=c, widest=widest))
    return results


# --------------------------------------------------------------------------------------
# Mining.
# --------------------------------------------------------------------------------------


def check_mining(model: nn.Module, layers: Sequence[str], images: Tensor, k: int = 2) -> Outcome:
    """A verified ``mine_topk`` run, then patches and projections of the best channel's records."""
    start = time.perf_counter()
    what = "mining " + ", ".join(layers)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = mine_topk(model, list(layers), images, k=k, batch_size=len(images), progress=False, verify=True)
            for layer in layers:
                channel = int(result.stats(layer).maximum.argmax())
                records = result.records(layer, channel)
                patches = result.patches(images, layer, channel)
                projections = result.projections(model, images, layer, channel)
                for crops, kind in ((patches, "patches"), (projections, "projections")):
                    if crops.images.shape[0] != k or not torch.isfinite(crops.images).all():
                        return Outcome(WRONG, what, f"{layer}: {kind} {tuple(crops.images.shape)} or not finite")
                if len(records) != k:
                    return Outcome(WRONG, what, f"{layer}: {len(records)} records, expected {k}")
    except Exception as err:
        return error_outcome(err, what, start)
    return Outcome(PASS, what, seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------------------
# One model.
# --------------------------------------------------------------------------------------


def run_model(spec: ModelSpec, profile: Profile) -> ModelReport:
    """Every check on one model; never raises (except KeyboardInterrupt and timeouts)."""
    size = profile.input_size(spec)
    report = ModelReport(spec.name, spec.family, spec.source, size)
    start = time.perf_counter()
    try:
        model = build(spec)
        report.build_s = time.perf_counter() - start
        images = sample_images(max(2, profile.images), size)
    except Exception as err:
        report.error = f"setup: {classify(err)[1]}"
        report.seconds = time.perf_counter() - start
        return report
    t = time.perf_counter()
    try:
        with torch.no_grad():
            model(images[:1])
    except Exception as err:  # the model's own limit (e.g. DLA and HRNet need sides divisible by 32)
        report.not_run = f"the model does not run at {size} px: {classify(err)[1]}"
        report.seconds = time.perf_counter() - start
        return report
    report.forward_s = time.perf_counter() - t
    try:
        layers = pick_layers(spec, model, images[:1], profile.layers)
        channel_layer = spec.channel_layer
        if channel_layer is None:
            found = concat_outputs(model, images[:1])
            channel_layer = found[len(found) // 2] if found else ""
    except TimeoutError:
        raise
    except Exception as err:
        report.error = f"setup: {classify(err)[1]}"
        report.seconds = time.perf_counter() - start
        return report
    mined = sorted(layers, key=lambda name: "[" not in name)[: profile.mining_layers]  # tuple outputs first
    checks: list[tuple[str, Callable[[], Any]]] = [
        ("attribution", lambda: check_attribution(model, images[:2], [3, 7])),
        ("fields", lambda: check_fields(model, layers, channel_layer, (3, size, size), profile)),
        ("mining", lambda: check_mining(model, mined, images[: profile.images])),
    ]
    for attr, check in checks:
        t = time.perf_counter()
        try:
            setattr(report, attr, check())
        except TimeoutError:
            raise
        except Exception as err:  # a bug of the sweep itself: say so rather than stop the sweep
            outcome = error_outcome(err, attr, t)
            outcome.kind, outcome.message = FAILED, f"sweep error: {outcome.message}"
            setattr(report, attr, [outcome] if attr == "fields" else outcome)
    report.seconds = time.perf_counter() - start
    return report


def describe(outcome: Outcome) -> str:
    """``"what: message"``, for tables and assertion messages."""
    return f"{outcome.what}: {outcome.message}" if outcome.message else outcome.what


# --------------------------------------------------------------------------------------
# The models.
# --------------------------------------------------------------------------------------

_NO_AUX = (("aux_logits", False), ("init_weights", False))


def _tv(name: str, family: str, layers: tuple[str, ...], channel_layer: str | None = "", **kw: Any) -> ModelSpec:
    return ModelSpec(name, family, "torchvision", layers=layers, channel_layer=channel_layer, **kw)


def _timm(name: str, family: str, **kw: Any) -> ModelSpec:
    return ModelSpec(name, family, "timm", **kw)


_RESNET = ("relu", "layer2", "layer4")

#: Every torchvision classification ConvNet family; one or two sizes where sizes only
#: scale width or depth (vgg, resnet, resnext, wide_resnet, densenet, mnasnet,
#: shufflenet, squeezenet, efficientnet, regnet, convnext).
TORCHVISION: list[ModelSpec] = [
    _tv("alexnet", "AlexNet", ("features.2", "features.5", "features.12")),
    _tv("vgg11", "VGG", ("features.2", "features.10", "features.20")),
    _tv("vgg16_bn", "VGG", ("features.6", "features.23", "features.43")),
    _tv("resnet18", "ResNet", _RESNET),
    _tv("resnet50", "ResNet", _RESNET),
    _tv("resnext50_32x4d", "ResNeXt", _RESNET),
    _tv("wide_resnet50_2", "Wide ResNet", _RESNET),
    _tv("densenet121", "DenseNet", ("features.pool0", "features.denseblock2", "features"), "features.denseblock2"),
    _tv("googlenet", "GoogLeNet", ("maxpool1", "inception3b", "inception5b"), "inception3b", kwargs=_NO_AUX),
    _tv(
        "inception_v3", "Inception v3", ("Conv2d_2b_3x3", "Mixed_5d", "Mixed_7c"), "Mixed_5d", small=96, kwargs=_NO_AUX
    ),
    _tv("mobilenet_v2", "MobileNet v2", ("features.1", "features.7", "features.18")),
    _tv("mobilenet_v3_small", "MobileNet v3", ("features.0", "features.4", "features.12")),
    _tv("mobilenet_v3_large", "MobileNet v3", ("features.1", "features.7", "features.16")),
    _tv("mnasnet0_5", "MnasNet", ("layers.8", "layers.10", "layers.16")),
    _tv("shufflenet_v2_x0_5", "ShuffleNet v2", ("maxpool", "stage3", "conv5"), "stage2.0"),
    _tv("squeezenet1_0", "SqueezeNet", ("features.2", "features.6", "features.12"), "features.3"),
    _tv("squeezenet1_1", "SqueezeNet", ("features.2", "features.7", "features.12"), "features.3"),
    _tv("efficientnet_b0", "EfficientNet", ("features.1", "features.4", "features.8")),
    _tv("efficientnet_v2_s", "EfficientNet v2", ("features.1", "features.4", "features.7")),
    _tv("regnet_x_400mf", "RegNet", ("stem", "trunk_output.block2", "trunk_output.block4")),
    _tv("regnet_y_400mf", "RegNet (SE)", ("stem", "trunk_output.block2", "trunk_output.block4")),
    _tv("convnext_tiny", "ConvNeXt", ("features.0", "features.3", "features.7")),
]

#: timm CNNs, the smallest variant of each family (random init, ``pretrained=False``).
#: Layers come from ``feature_info`` unless given; the channel layer is the middle
#: concatenation output unless given.
TIMM: list[ModelSpec] = [
    _timm("resnet26d", "ResNet-D (avg-pool shortcut)"),
    _timm("resnet26t", "ResNet-T (tiered stem)"),
    _timm("resnest14d", "ResNeSt (split attention)"),
    _timm("res2net50_14w_8s", "Res2Net"),
    _timm("skresnet18", "SK-Net (selective kernel)"),
    _timm("regnetx_002", "RegNet"),
    _timm("regnety_002", "RegNet (SE)"),
    _timm("regnetz_b16", "RegNetZ"),
    _timm("efficientnet_b0", "EfficientNet"),
    _timm("tf_efficientnet_b0", "EfficientNet (TF same padding)"),
    _timm("tf_efficientnetv2_b0", "EfficientNet v2 (TF same padding)"),
    _timm("efficientnet_b0_gn", "EfficientNet (GroupNorm)"),
    _timm("mobilenetv3_small_050", "MobileNet v3"),
    _timm("tf_mobilenetv3_small_minimal_100", "MobileNet v3 (TF same padding)"),
    _timm("mobilenetv4_conv_small", "MobileNet v4"),
    _timm("ghostnet_050", "GhostNet", channel_layer="blocks.3.0.ghost1"),
    _timm("ghostnetv2_100", "GhostNet v2 (DFC attention)", channel_layer="blocks.3.0.ghost1"),
    _timm("repghostnet_050", "RepGhost"),
    _timm("dla34", "DLA"),
    _timm("dla46_c", "DLA"),
    _timm("dpn48b", "DPN"),
    _timm("hrnet_w18_small", "HRNet", layers=("layer1", "stage2[1]", "stage3[0]")),
    _timm("ese_vovnet19b_dw", "VoVNet"),
    _timm("cspresnet50", "CSP"),
    _timm("cspdarknet53", "CSP"),
    _timm("cs3darknet_focus_s", "CSP (focus stem)"),
    _timm("rexnet_100", "ReXNet"),
    _timm("repvgg_a0", "RepVGG"),
    _timm("mobileone_s0", "MobileOne"),
    _timm("xception41", "Xception"),
    _timm("legacy_xception", "Xception"),
    _timm("inception_v4", "Inception v4", small=96),
    _timm("nf_resnet26", "NFNet (NF-ResNet)"),
    _timm("eca_nfnet_l0", "NFNet (ECA)"),
    _timm("convnext_atto", "ConvNeXt"),
    _timm("convnextv2_atto", "ConvNeXt v2 (GRN)"),
    _timm("densenet121", "DenseNet"),
    _timm("densenetblur121d", "DenseNet (blur pool)"),
    _timm("selecsls42b", "SelecSLS"),
    _timm("mixnet_s", "MixNet", channel_layer="blocks.2.0.conv_dw"),
    _timm("tf_mixnet_s", "MixNet (TF same padding)", channel_layer="blocks.2.0.conv_dw"),
    _timm("mnasnet_small", "NAS: MnasNet"),
    _timm("fbnetc_100", "NAS: FBNet"),
    _timm("spnasnet_100", "NAS: SPNASNet"),
    _timm("hardcorenas_a", "NAS: HardCoRe-NAS"),
    _timm("nasnetalarge", "NAS: NASNet", small=96),
    _timm("pnasnet5large", "NAS: PNASNet", small=96),
    _timm("resnetblur18", "ResNet (blur pool)"),
    _timm("resnetaa34d", "ResNet (anti-aliased)"),
    _timm("gcresnext26ts", "GC-ResNeXt (global context)"),
    _timm("resnet50_gn", "ResNet (GroupNorm)"),
    _timm("resnetv2_50x1_bit", "ResNet v2 BiT (GroupNorm, StdConv)"),
    _timm("seresnet18", "SE-ResNet"),
    _timm("seresnext26d_32x4d", "SE-ResNeXt"),
    _timm("ecaresnet26t", "ECA-ResNet"),
    _timm("tresnet_m", "TResNet (space-to-depth)", layers=("body.layer1", "body.layer2", "body.layer4")),
    _timm("lcnet_050", "LCNet"),
    _timm("gernet_s", "GENet"),
    _timm("hgnetv2_b0", "HGNet v2"),
]

MODELS: dict[str, ModelSpec] = {spec.name if spec.source == "timm" else f"tv/{spec.name}": spec for spec in TIMM}
MODELS.update({f"tv/{spec.name}": spec for spec in TORCHVISION})

#: The CI subset: one model per family that stresses the analysis, small enough for CI.
CI_SUBSET = (
    "seresnet18",  # squeeze-excitation gate
    "resnet50_gn",  # GroupNorm statistics
    "tf_efficientnet_b0",  # dynamic TF "same" padding, SE
    "res2net50_14w_8s",  # hierarchical channel splits
    "skresnet18",  # selective kernels
    "resnet26d",  # ResNet-D avg-pool shortcut
    "dla46_c",  # DLA aggregation
    "cs3darknet_focus_s",  # CSP channel split
    "tv/shufflenet_v2_x0_5",  # chunk and channel shuffle
    "ghostnet_050",  # ghost modules (concat, slice), SE
    "hrnet_w18_small",  # tuple-valued stages, upsampling
    "nf_resnet26",  # functional conv with standardized weights
    "convnext_atto",  # channels-last blocks, LayerNorm
    "densenet121",  # dense concatenation
)
