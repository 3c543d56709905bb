"""The op catalogue of the reverse engine: which ops get which rule.

Names are ``func.__name__`` as ``TorchFunctionMode`` sees them; one name covers the
functional, the ``torch.*`` builtin and the ``Tensor`` method. docs/engine.md lists
the rules in words.
"""

from __future__ import annotations

#: ReLU proper: every rule set has an exact rule for these.
RELU_OPS = frozenset({"relu", "relu_"})
#: ``threshold(x, 0, 0)`` and ``clamp(x, min=0)`` are ReLU spelled differently.
RELU_SPELLINGS = frozenset(
    {"threshold", "threshold_", "_threshold", "clamp", "clamp_", "clamp_min", "clamp_min_", "clip", "clip_"}
)
#: ReLU-like activations: their rule is chosen by ``activations=``.
RELU_LIKE_OPS = frozenset(
    {
        "relu6",
        "hardtanh",
        "hardtanh_",
        "leaky_relu",
        "leaky_relu_",
        "rrelu",
        "rrelu_",
        "prelu",
        "elu",
        "elu_",
        "celu",
        "celu_",
        "selu",
        "selu_",
        "gelu",
        "gelu_",
        "silu",
        "silu_",
        "hardswish",
        "hardswish_",
        "mish",
        "mish_",
        "softplus",
    }
)
#: Gating / squashing non-linearities: always their plain gradient. They act as
#: multiplicative gates (squeeze-excitation, attention) or output heads, where a
#: rectification has no meaning.
GATE_OPS = frozenset(
    {
        "sigmoid",
        "sigmoid_",
        "tanh",
        "tanh_",
        "hardsigmoid",
        "hardsigmoid_",
        "softmax",
        "_softmax",
        "log_softmax",
        "softmin",
        "softsign",
        "logsigmoid",
        "glu",
        "scaled_dot_product_attention",
    }
)
#: Elementwise gates: the probe replaces them by the identity, like the ReLU family, since
#: it maps dependence, not values (a saturated hardsigmoid would hide it).
ELEMENTWISE_GATES = frozenset(
    {"sigmoid", "sigmoid_", "tanh", "tanh_", "hardsigmoid", "hardsigmoid_", "softsign", "logsigmoid"}
)
#: Normalizations whose statistics depend on the data: plain gradient (their exact
#: Jacobian transpose). Eval-mode BatchNorm is affine, so its gradient is a transpose.
NORM_OPS = frozenset(
    {"batch_norm", "layer_norm", "group_norm", "instance_norm", "local_response_norm", "rms_norm", "normalize"}
)
MAX_POOL_OPS = frozenset(
    {
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "_max_pool1d",
        "_max_pool2d",
        "_max_pool3d",
        "max_pool1d_with_indices",
        "max_pool2d_with_indices",
        "max_pool3d_with_indices",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "_adaptive_max_pool1d",
        "_adaptive_max_pool2d",
        "_adaptive_max_pool3d",
        "adaptive_max_pool1d_with_indices",
        "adaptive_max_pool2d_with_indices",
        "adaptive_max_pool3d_with_indices",
    }
)
#: Linear or structural ops: their autograd backward is their transpose.
LINEAR_OPS = frozenset(
    {
        # convolutions and dense layers
        "conv1d", "conv2d", "conv3d", "convolution", "_convolution",
        "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
        "linear", "bilinear", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "__matmul__",
        # pooling and resampling that is linear in the input
        "avg_pool1d", "avg_pool2d", "avg_pool3d",
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
        "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "grid_sample",
        "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "pad",
        # arithmetic (products of two signals get the product rule)
        "add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__isub__",
        "__rsub__", "rsub", "neg", "neg_", "__neg__", "__pos__", "mul", "mul_", "__mul__",
        "__imul__", "__rmul__", "div", "div_", "__truediv__", "__itruediv__", "__rtruediv__",
        "true_divide", "sum", "mean", "cumsum", "addcmul", "lerp",
        # shape and copies
        "cat", "concat", "concatenate", "stack", "hstack", "vstack", "view", "view_as", "reshape",
        "reshape_as", "flatten", "unflatten", "permute", "transpose", "transpose_", "t", "contiguous",
        "clone", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "expand", "expand_as", "repeat",
        "narrow", "select", "__getitem__", "__setitem__", "chunk", "split", "split_with_sizes",
        "unbind", "tensor_split", "movedim", "moveaxis", "swapaxes", "roll", "flip", "index_select",
        "gather", "masked_fill", "masked_fill_", "where", "to", "type", "float", "double", "half",
        "bfloat16", "cuda", "cpu", "requires_grad_", "detach", "detach_", "__get__", "as_strided",
        "unfold", "fold", "diagonal", "tile", "copy_", "zero_", "fill_",
        # dropout (identity in eval mode, a fixed mask in training mode)
        "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
        "feature_alpha_dropout", "feature_dropout",
    }
)  # fmt: skip

#: Every op this engine has a documented rule for.
KNOWN_OPS = RELU_OPS | RELU_SPELLINGS | RELU_LIKE_OPS | GATE_OPS | NORM_OPS | MAX_POOL_OPS | LINEAR_OPS

# --------------------------------------------------------------------------------------
# The receptive-field analysis (``_rf_rules.py``): which geometry rule each op gets.
# --------------------------------------------------------------------------------------

#: Ops whose result is never a tensor computed from the input: skipped outright.
NON_TENSOR_OPS = frozenset(
    {
        "size", "dim", "numel", "nelement", "__len__", "is_floating_point", "is_complex", "is_contiguous",
        "data_ptr", "stride", "storage_offset", "element_size", "get_device", "tolist", "item", "__bool__",
        "__int__", "__float__", "__index__", "__format__", "__repr__", "__hash__", "__get__shape",
        "__get__dtype", "__get__device", "__get__ndim", "__get__is_cuda", "__get__requires_grad",
        "__get__grad_fn", "__get__layout", "__get__is_leaf", "__get__names", "__get__grad",
    }
)  # fmt: skip
#: Ops that make a tensor shaped like their input whose values do not depend on it.
NO_DEPENDENCE_OPS = frozenset(
    {
        "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
        "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "fill_", "zero_",
    }
)  # fmt: skip
#: Ops that give their first tensor the second's values.
COPY_OPS = frozenset({"copy_"})
#: Ops whose output holds the same elements in the same places: the same field.
IDENTITY_OPS = frozenset(
    {
        "contiguous", "clone", "detach", "detach_", "to", "type", "float", "double", "half", "bfloat16",
        "cpu", "cuda", "requires_grad_", "__get__data", "type_as",
    }
)  # fmt: skip
#: Reshapes: the element order is kept.
RESHAPE_OPS = frozenset(
    {"view", "reshape", "view_as", "reshape_as", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze",
     "unsqueeze_"}
)  # fmt: skip
#: Index and shape ops: traced on a tensor of element indices.
INDEX_OPS = RESHAPE_OPS | frozenset(
    {
        "expand", "expand_as", "broadcast_to", "repeat", "tile", "permute", "transpose", "transpose_", "swapaxes",
        "swapdims", "movedim", "moveaxis", "t", "narrow", "select", "__getitem__", "split", "split_with_sizes",
        "chunk", "unbind", "tensor_split", "hsplit", "vsplit", "flip", "fliplr", "flipud", "roll", "index_select",
        "diagonal", "channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "unfold",
        "__get__T", "__get__mT",
    }
)  # fmt: skip
#: Ops whose second tensor gives only a shape or a dtype.
SHAPE_LIKE_OPS = frozenset({"expand_as", "view_as", "reshape_as", "type_as"})
#: Interpolation: resampling whose reach is read from the op itself.
RESAMPLE_OPS = frozenset({"interpolate", "upsample", "upsample_nearest", "upsample_bilinear"})
CONCAT_OPS = frozenset({"cat", "concat", "concatenate"})
STACK_OPS = frozenset({"stack"})
#: Reductions over the dims given by ``dim`` (all dims without it).
REDUCTION_OPS = frozenset(
    {
        "sum", "mean", "nansum", "nanmean", "amax", "amin", "max", "min", "std", "var", "std_mean", "var_mean",
        "norm", "linalg_vector_norm", "logsumexp", "prod", "median", "nanmedian", "mode", "all", "any",
        "count_nonzero", "argmax", "argmin", "aminmax",
    }
)  # fmt: skip
#: Ops whose every output along ``dim`` depends on every input along it.
MIX_ALONG_DIM_OPS = frozenset(
    {
        "softmax", "_softmax", "log_softmax", "softmin", "cumsum", "cumprod", "cummax", "cummin",
        "logcumsumexp", "sort", "argsort", "topk", "kthvalue", "glu",
    }
)  # fmt: skip
#: Matrix products: a contraction over a spatial dim mixes space.
MATMUL_OPS = frozenset(
    {"linear", "matmul", "mm", "bmm", "__matmul__", "__rmatmul__", "einsum", "bilinear", "addmm", "baddbmm"}
)

#: Module class names (lower case fragments) that compute gates from global statistics.
_GATE_NAMES = (
    ("squeezeexcite", "squeeze-excitation"),
    ("seblock", "squeeze-excitation"),
    ("semodule", "squeeze-excitation"),
    ("effectivese", "squeeze-excitation"),
    ("eca", "ECA"),
    ("globalcontext", "global-context"),
    ("gcmodule", "global-context"),
    ("selectivekernel", "selective-kernel"),
    ("splitattn", "split-attention"),
    ("coordatt", "coordinate-attention"),
    ("cbam", "CBAM"),
    ("gather", "gather-excite"),
)


def describe_gate(class_name: str) -> str:
    """A readable kind for a gating module's class name, or "" if it is not one we know."""
    lowered = class_name.lower()
    for fragment, kind in _GATE_NAMES:
        if fragment in lowered:
            return kind
    if lowered in ("se", "selayer") or (class_name.startswith("SE") and class_name[2:3].isupper()):
        return "squeeze-excitation"
    return ""
