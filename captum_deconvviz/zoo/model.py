"""The default model: a ZF-style ConvNet for CIFAR-10."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ZFNetCIFAR"]


class ZFNetCIFAR(nn.Module):
    """A small Zeiler & Fergus style ConvNet for 32x32 images.

    Four convolutions with ReLU and ZFNet's overlapping 3x3 stride-2 max-pooling,
    then global average pooling and a linear classifier::

        conv 5x5 (c1) - ReLU - maxpool 3/2      32 -> 16
        conv 5x5 (c2) - ReLU - maxpool 3/2      16 -> 8
        conv 3x3 (c3) - ReLU
        conv 3x3 (c4) - ReLU - maxpool 3/2       8 -> 4
        global average pool - linear (10 classes)

    With ``batch_norm=True`` every convolution is followed by BatchNorm (used for
    training); :meth:`fold_batch_norm` folds it into the convolutions afterwards, so
    the shipped model is a plain conv/ReLU/pool network, as in the paper.

    Args:
        widths: output channels of the four convolutions.
        num_classes: classifier outputs.
        batch_norm: insert BatchNorm after each convolution.
        first_kernel: kernel size of the first convolution (5).
        first_stride: stride of the first convolution (1). A large kernel with a large
            stride gives the AlexNet-like first layer that Zeiler & Fergus criticized.
    """

    def __init__(
        self,
        widths: tuple[int, int, int, int] = (48, 96, 192, 192),
        num_classes: int = 10,
        batch_norm: bool = False,
        first_kernel: int = 5,
        first_stride: int = 1,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.widths = (c1, c2, c3, c4)
        self.first = (first_kernel, first_stride)

        def block(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=not batch_norm)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(3, c1, first_kernel, first_stride),
            nn.MaxPool2d(3, 2, padding=1),
            *block(c1, c2, 5),
            nn.MaxPool2d(3, 2, padding=1),
            *block(c2, c3, 3),
            *block(c3, c4, 3),
            nn.MaxPool2d(3, 2, padding=1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def fold_batch_norm(self) -> ZFNetCIFAR:
        """A copy without BatchNorm whose convolutions absorb it (eval-mode statistics)."""
        if not any(isinstance(m, nn.BatchNorm2d) for m in self.features):
            raise ValueError("this model has no BatchNorm to fold")
        folded = ZFNetCIFAR(self.widths, self.classifier.out_features, False, *self.first)
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        norms = [m for m in self.features if isinstance(m, nn.BatchNorm2d)]
        targets = [m for m in folded.features if isinstance(m, nn.Conv2d)]
        for conv, norm, target in zip(convs, norms, targets, strict=True):
            # Always set here: BatchNorm2d tracks running statistics by default, and folded convs have a bias.
            assert norm.running_mean is not None and norm.running_var is not None and target.bias is not None
            scale = norm.weight.detach() / (norm.running_var + norm.eps).sqrt()
            bias = conv.bias.detach() if conv.bias is not None else 0.0
            target.weight.data.copy_(conv.weight.detach() * scale.view(-1, 1, 1, 1))
            target.bias.data.copy_(norm.bias.detach() + (bias - norm.running_mean) * scale)
        folded.classifier.load_state_dict(self.classifier.state_dict())
        return folded.eval()
