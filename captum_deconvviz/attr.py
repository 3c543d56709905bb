"""Captum attribution classes over the reverse-rule engine.

``ZFDeconvolution`` and ``NeuronZFDeconvolution`` are drop-in peers of Captum's
``Deconvolution`` and ``NeuronDeconvolution``; ``EngineGuidedBackprop`` and
``NeuronEngineGuidedBackprop`` are the Guided Backprop twins, for fair
comparisons. Unlike Captum's module hooks, the engine sees every ReLU: functional
(``F.relu``, ``torch.relu``, ``Tensor.relu``), in place, and modules called more
than once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from captum._utils.common import _format_output, _is_tuple
from captum._utils.gradient import apply_gradient_requirements, undo_gradient_requirements
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import GradientAttribution, NeuronAttribution
from captum.log import log_usage
from torch import Tensor, nn

from ._checks import check_bool
from ._forward import EvalMode, check_model, check_target, format_inputs, forward_to_layer, resolve_layer, run_forward
from ._guard import autograd_inside, check_finite
from ._units import NeuronSelector, Seed, check_seed, neuron_seed, reverse_from_seeds
from .engine import ActivationPolicy, ReverseRules

__all__ = ["EngineGuidedBackprop", "NeuronEngineGuidedBackprop", "NeuronZFDeconvolution", "ZFDeconvolution"]


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _documented(method: _Method, doc: str) -> _Method:
    """``method`` as a public class's own method: logged as Captum logs ``attribute``, under ``doc``.

    The DeconvNet and Guided Backprop classes share one ``attribute`` (signature and
    body) but each documents it in its own words; ``log_usage`` makes a new function,
    which takes the docstring. Its ``__wrapped__`` is the undecorated method, as Captum's
    ``NoiseTunnel`` expects.
    """
    logged: _Method = log_usage()(method)
    logged.__doc__ = doc
    return logged


class _EngineMethod:
    """What the engine's Captum classes share: the rule set, the activation policy, and one
    forward plus one reverse pass with Captum's input bookkeeping around them."""

    _rules = "zf"
    model: nn.Module
    activations: ActivationPolicy

    def _use_engine(self, model: nn.Module, activations: ActivationPolicy) -> None:
        self.model = model
        ReverseRules(self._rules, activations)  # validates ``activations`` now, not at attribute()
        self.activations = activations

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def _reverse(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        forward: Callable[[tuple[Tensor, ...]], Any],
        seeds: Callable[[Any], tuple[Tensor, Tensor]],
    ) -> TensorOrTupleOfTensorsGeneric:
        """Run ``forward`` under the rule set, seed its result with ``seeds`` (output, seed),
        and return the reverse pass at the inputs, shaped as Captum returns attributions."""
        is_tuple = _is_tuple(inputs)
        inputs_tuple = format_inputs(inputs, self.model)
        for i, item in enumerate(inputs_tuple):
            check_finite(item, "inputs" if len(inputs_tuple) == 1 else f"inputs[{i}]")
        gradient_mask = apply_gradient_requirements(inputs_tuple, warn=False)
        try:
            # Eval mode on the model itself, as every entry point does (docs/reliability.md):
            # BatchNorm uses its running statistics and leaves them alone, Dropout is off.
            with torch.enable_grad(), EvalMode(self.model):
                with ReverseRules(self._rules, activations=self.activations):
                    output = forward(inputs_tuple)
                selected, seed = seeds(output)
                check_finite(selected, "the forward output that seeds the reverse pass", "outputs")
                grads = reverse_from_seeds(selected, inputs_tuple, seed)
        finally:
            undo_gradient_requirements(inputs_tuple, gradient_mask)
        return _format_output(is_tuple, grads)


class _RuleAttribution(_EngineMethod, GradientAttribution):
    """A Captum ``GradientAttribution`` from the output (``target``) back to the inputs."""

    def __init__(self, model: nn.Module, activations: ActivationPolicy = "rectify") -> None:
        model = check_model(model)
        GradientAttribution.__init__(self, model)
        self._use_engine(model, activations)

    @autograd_inside
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> TensorOrTupleOfTensorsGeneric:
        """Each public subclass documents this in its own words (:func:`_documented`)."""

        def seeds(output: Any) -> tuple[Tensor, Tensor]:
            selected = check_target(output, target)
            return selected, torch.ones_like(selected)

        return self._reverse(inputs, lambda xs: run_forward(self.model, xs, additional_forward_args), seeds)


class ZFDeconvolution(_RuleAttribution):
    r"""Zeiler & Fergus's DeconvNet with switch unpooling, as a Captum attribution.

    The reverse pass undoes max-pooling with the switches recorded in this very
    forward pass (summing where overlapping windows share a switch), rectifies the
    signal at every ReLU (``relu(grad)``) and undoes convolutions and linear layers
    with the transpose of their weights; biases play no part.

    Unlike ``captum.attr.Deconvolution``, which hooks ``nn.ReLU`` modules, every ReLU
    the forward runs is caught: ``F.relu``, ``torch.relu``, ``Tensor.relu``, in-place
    variants, and a module called several times. On models with ``nn.ReLU`` modules
    only, both give the same result.

    Args:
        model (nn.Module): the network. It is never modified.
        activations (str, optional): the rule for ReLU-like activations (ReLU6,
            LeakyReLU, GELU, SiLU, ...): ``"rectify"`` gives them the ReLU rule,
            ``"gradient"`` their plain gradient, ``"raise"`` an error.
            Default: ``"rectify"``.

    Example::

        >>> import torchvision
        >>> from captum_deconvviz import ZFDeconvolution
        >>> model = torchvision.models.vgg11().eval()
        >>> images = torch.randn(2, 3, 64, 64)
        >>> attributions = ZFDeconvolution(model).attribute(images, target=3)
        >>> attributions.shape
        torch.Size([2, 3, 64, 64])
    """

    _rules = "zf"

    attribute = _documented(
        _RuleAttribution.attribute,
        r"""Project the target output back to the inputs with the DeconvNet.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): inputs for which attributions are
                computed; dimension 0 is the batch. A tuple is passed to the model
                as several positional arguments.
            target (int, tuple, Tensor or list, optional): output indices to project,
                with Captum's exact semantics (one index for all examples, or one per
                example). Required when the model returns more than one value per
                example. Default: None.
            additional_forward_args (Any, optional): further positional arguments of
                the model, not attributed. Default: None.

        Returns:
            *Tensor* or *tuple[Tensor, ...]*: attributions shaped like ``inputs``.

        Example::

            >>> attributions = ZFDeconvolution(model).attribute(images, target=[3, 7])
        """,
    )


class EngineGuidedBackprop(_RuleAttribution):
    r"""Guided Backprop computed by the same engine as :class:`ZFDeconvolution`.

    ReLU backward is ``relu(grad) * (input > 0)`` (Springenberg et al. 2015). It
    equals ``captum.attr.GuidedBackprop`` on models whose ReLUs are all ``nn.ReLU``
    modules, and stays correct where Captum's hooks miss functional, in-place or
    reused ReLUs, so comparisons with :class:`ZFDeconvolution` are fair.

    Args:
        model (nn.Module): the network. It is never modified.
        activations (str, optional): the rule for ReLU-like activations, as in
            :class:`ZFDeconvolution`. Default: ``"rectify"``.

    Example::

        >>> gbp = EngineGuidedBackprop(model)
        >>> attributions = gbp.attribute(images, target=3)
    """

    _rules = "guided"

    attribute = _documented(
        _RuleAttribution.attribute,
        r"""Guided Backprop of the target output with respect to the inputs.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): inputs, dimension 0 is the batch.
            target (int, tuple, Tensor or list, optional): output indices, with
                Captum's semantics. Default: None.
            additional_forward_args (Any, optional): further model arguments.
                Default: None.

        Returns:
            *Tensor* or *tuple[Tensor, ...]*: attributions shaped like ``inputs``.

        Example::

            >>> attributions = EngineGuidedBackprop(model).attribute(images, target=3)
        """,
    )


class _RuleNeuronAttribution(_EngineMethod, NeuronAttribution, GradientAttribution):
    """A Captum ``NeuronAttribution`` from a unit of ``layer`` back to the inputs."""

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module,
        device_ids: list[int] | None = None,
        activations: ActivationPolicy = "rectify",
    ) -> None:
        model = check_model(model)
        self.layer_name, module = resolve_layer(model, layer)
        NeuronAttribution.__init__(self, model, module, device_ids)
        GradientAttribution.__init__(self, model)
        self._use_engine(model, activations)

    @autograd_inside
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        neuron_selector: NeuronSelector,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
        seed: Seed = "activation",
    ) -> TensorOrTupleOfTensorsGeneric:
        """Each public subclass documents this in its own words (:func:`_documented`)."""
        check_seed(seed)
        check_bool(attribute_to_neuron_input, "attribute_to_neuron_input")

        def forward(xs: tuple[Tensor, ...]) -> Tensor:
            return forward_to_layer(
                self.model,
                self.layer,
                xs,
                additional_forward_args,
                to_input=attribute_to_neuron_input,
                layer_name=self.layer_name,
            )

        return self._reverse(inputs, forward, lambda out: (out, neuron_seed(out, neuron_selector, seed)))


class NeuronZFDeconvolution(_RuleNeuronAttribution):
    r"""DeconvNet projection of a neuron of a hidden layer, as a Captum neuron attribution.

    The forward pass stops at ``layer``. The selected unit is seeded with its own
    activation (``seed="activation"``, Zeiler & Fergus) or with 1
    (``seed="one"``, what ``captum.attr.NeuronDeconvolution`` does), every other unit
    of the layer is zeroed, and the DeconvNet reverse pass brings the signal to the
    input. Because the reverse pass is positively homogeneous, for a non-negative
    activation ``a`` the ``"activation"`` result is ``a`` times the ``"one"`` result.

    Args:
        model (nn.Module): the network. It is never modified.
        layer (nn.Module or str): a module of ``model`` or its dotted name. If the
            module runs several times in one forward pass, its first call is used.
        device_ids (list[int], optional): accepted for Captum compatibility;
            ``DataParallel`` models are refused (pass ``model.module``).
        activations (str, optional): the rule for ReLU-like activations, as in
            :class:`ZFDeconvolution`. Default: ``"rectify"``.

    Example::

        >>> import torchvision
        >>> model = torchvision.models.alexnet().eval()
        >>> neuron = NeuronZFDeconvolution(model, "features.7")
        >>> images = torch.randn(2, 3, 128, 128)
        >>> attributions = neuron.attribute(images, (12, 3, 3))
    """

    _rules = "zf"

    attribute = _documented(
        _RuleNeuronAttribution.attribute,
        r"""Project the selected neuron of ``layer`` back to the inputs.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): inputs, dimension 0 is the batch.
            neuron_selector (int, tuple, callable or Tensor): which neuron, with
                Captum's semantics: an int (2-D layer outputs), a tuple with one
                index or slice per layer dimension (slices are summed), or a callable
                from the layer tensor to one value per example. Also a LongTensor
                ``[N, k]`` that picks a different unit for each example, e.g. rows of
                ``(channel, y, x)``.
            additional_forward_args (Any, optional): further model arguments.
                Default: None.
            attribute_to_neuron_input (bool, optional): select the neuron in the
                layer's input instead of its output. Default: False.
            seed (str, optional): ``"activation"`` or ``"one"``, see the class.
                Default: ``"activation"``.

        Returns:
            *Tensor* or *tuple[Tensor, ...]*: attributions shaped like ``inputs``.

        Example::

            >>> units = torch.tensor([[12, 3, 3], [40, 1, 5]])
            >>> attributions = neuron.attribute(images, units, seed="one")
        """,
    )


class NeuronEngineGuidedBackprop(_RuleNeuronAttribution):
    r"""Guided Backprop of a hidden neuron, computed by the engine.

    The peer of ``captum.attr.NeuronGuidedBackprop`` with the engine's complete
    ReLU coverage, and the neuron seeding of :class:`NeuronZFDeconvolution`.

    Args:
        model (nn.Module): the network. It is never modified.
        layer (nn.Module or str): a module of ``model`` or its dotted name.
        device_ids (list[int], optional): accepted for Captum compatibility.
        activations (str, optional): the rule for ReLU-like activations.
            Default: ``"rectify"``.

    Example::

        >>> neuron = NeuronEngineGuidedBackprop(model, "features.7")
        >>> attributions = neuron.attribute(images, (12, 3, 3), seed="one")
    """

    _rules = "guided"

    attribute = _documented(
        _RuleNeuronAttribution.attribute,
        r"""Guided Backprop of the selected neuron of ``layer`` to the inputs.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): inputs, dimension 0 is the batch.
            neuron_selector (int, tuple, callable or Tensor): which neuron, as in
                :meth:`NeuronZFDeconvolution.attribute`.
            additional_forward_args (Any, optional): further model arguments.
                Default: None.
            attribute_to_neuron_input (bool, optional): select in the layer's input.
                Default: False.
            seed (str, optional): ``"activation"`` or ``"one"``. Default:
                ``"activation"``.

        Returns:
            *Tensor* or *tuple[Tensor, ...]*: attributions shaped like ``inputs``.

        Example::

            >>> attributions = NeuronEngineGuidedBackprop(model, "features.7").attribute(images, (1, 2, 2))
        """,
    )
