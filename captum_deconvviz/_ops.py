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
