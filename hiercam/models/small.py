"""A small convolutional backbone for CPU work: feature maps at stride 8, no classifier."""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from hiercam._validation import check_choice, check_int

__all__ = ["SmallConvNet"]

Norm = Literal["batch", "group"]


class SmallConvNet(nn.Module):
    """Five 3 x 3 convolutions (three with stride 2), each followed by a normalisation and ReLU.

    Channel widths are ``width, 2 width, 2 width, 4 width, 4 width``; the output stride is 8, so a 96 x 96
    image gives a ``(B, 4 width, 12, 12)`` feature map: fine enough for class activation maps.

    Normalisation, ``norm="batch"`` (default): BatchNorm, as in torchvision's backbones, so the model behaves
    like them: in train mode it normalises with the statistics of the batch and updates its running
    averages; in eval mode it uses the running averages. Put it in eval mode for CAMs and inference (the
    output of an image then does not depend on the rest of the batch). BatchNorm is the default because it
    trains much faster on FashionScenes than the alternatives measured (see ``docs/training.md``).

    ``norm="group"``: GroupNorm with ``gcd(8, channels)`` groups. It keeps no running statistics, so train
    and eval mode compute the same function and each image is processed independently of its batch; it
    learns FashionScenes markedly more slowly.

    Args:
        width: channels of the first convolution, >= 1.
        in_channels: channels of the input images, >= 1.
        norm: ``"batch"`` or ``"group"``.

    Attributes:
        out_channels: ``C = 4 * width``, the channels of the output feature map.

    Examples:
        >>> import torch
        >>> net = SmallConvNet(width=8).eval()
        >>> net.out_channels, net(torch.zeros(2, 3, 96, 96)).shape
        (32, torch.Size([2, 32, 12, 12]))
    """

    out_channels: int

    def __init__(self, width: int = 16, in_channels: int = 3, norm: Norm = "batch") -> None:
        super().__init__()
        width = check_int(width, "width", minimum=1)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        check_choice(norm, "norm", ("batch", "group"))
        plan = [(in_channels, width, 2), (width, 2 * width, 2), (2 * width, 2 * width, 1)]
        plan += [(2 * width, 4 * width, 2), (4 * width, 4 * width, 1)]
        layers: list[nn.Module] = []
        for cin, cout, stride in plan:
            normalisation = nn.BatchNorm2d(cout) if norm == "batch" else nn.GroupNorm(math.gcd(8, cout), cout)
            layers += [
                nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
                normalisation,
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.out_channels = 4 * width
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        """Feature maps ``(B, C, ceil(H / 8), ceil(W / 8))`` of images ``(B, in_channels, H, W)``."""
        features: Tensor = self.features(images)
        return features
