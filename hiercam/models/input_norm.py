"""Input normalisation: how images in ``[0, 1]`` are scaled before a network, as a function and as layers.

| ``InputNorm`` | scaling | for weights trained by |
| --- | --- | --- |
| ``"imagenet"`` | ``(x - mean) / std`` with ``IMAGENET_MEAN`` and ``IMAGENET_STD`` | torchvision, timm |
| ``"tanh"`` | ``2 x - 1``, i.e. ``x / 127.5 - 1`` on 0..255 pixels | TensorFlow's MobileNets |
| ``"none"`` | ``x`` | hiercam's own [`SmallConvNet`][hiercam.SmallConvNet] |
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from hiercam._validation import check_choice, check_tensor, format_shape

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputNorm",
    "apply_input_norm",
    "ImageNetNormalize",
    "TanhNormalize",
    "with_input_norm",
]

InputNorm = Literal["imagenet", "tanh", "none"]
"""How images in ``[0, 1]`` are scaled before a network: ImageNet mean/std, ``2 x - 1``, or unchanged."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel (RGB) mean of ImageNet images in ``[0, 1]``."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel (RGB) standard deviation of ImageNet images in ``[0, 1]``."""

_MODES: tuple[str, ...] = get_args(InputNorm)


def apply_input_norm(images: Tensor, input_norm: InputNorm) -> Tensor:
    """Scale RGB images in ``[0, 1]`` as the network's weights expect.

    Args:
        images: ``(3, H, W)`` or ``(B, 3, H, W)`` floating-point images in ``[0, 1]``.
        input_norm: ``"imagenet"`` (``(x - mean) / std`` with ImageNet's statistics), ``"tanh"``
            (``2 x - 1``) or ``"none"`` (unchanged).

    Returns:
        The scaled images, same shape, device and dtype (``images`` itself for ``"none"``).

    Raises:
        TypeError: ``images`` is not a floating-point tensor.
        ValueError: ``images`` has no 3-channel axis in third-from-last position, or ``input_norm`` is
            unknown.

    Examples:
        >>> images = torch.full((1, 3, 2, 2), 0.5)
        >>> apply_input_norm(images, "tanh").unique()
        tensor([0.])
        >>> apply_input_norm(images, "imagenet")[0, :, 0, 0]
        tensor([0.0655, 0.1964, 0.4178])
    """
    check_choice(input_norm, "input_norm", _MODES)
    check_tensor(images, "images", ndim=(3, 4), floating=True)
    if images.shape[-3] != 3:
        raise ValueError(f"`images` must be (3, H, W) or (B, 3, H, W), got {format_shape(images.shape)}")
    if input_norm == "tanh":
        return images * 2 - 1
    if input_norm == "imagenet":
        mean, std = _imagenet_statistics(images)
        return (images - mean) / std
    return images


def _imagenet_statistics(like: Tensor) -> tuple[Tensor, Tensor]:
    """ImageNet's mean and std as ``(3, 1, 1)`` tensors on the device and dtype of ``like``."""
    mean = torch.tensor(IMAGENET_MEAN, device=like.device, dtype=like.dtype)
    std = torch.tensor(IMAGENET_STD, device=like.device, dtype=like.dtype)
    return mean.view(3, 1, 1), std.view(3, 1, 1)


class ImageNetNormalize(nn.Module):
    """``(x - mean) / std`` with ImageNet's statistics: ``apply_input_norm(x, "imagenet")`` as a layer.

    The statistics are buffers (moved with the module, not saved in its state dict).

    Example:
        >>> layer = ImageNetNormalize()
        >>> images = torch.rand(2, 3, 4, 4)
        >>> torch.allclose(layer(images), apply_input_norm(images, "imagenet"))
        True
    """

    mean: Tensor
    std: Tensor

    def __init__(self) -> None:
        super().__init__()
        mean, std = _imagenet_statistics(torch.empty(0))
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """Normalise ``(B, 3, H, W)`` images in ``[0, 1]``."""
        return (images - self.mean) / self.std


class TanhNormalize(nn.Module):
    """``2 x - 1``: images in ``[0, 1]`` to ``[-1, 1]``, i.e. ``x / 127.5 - 1`` on 0..255 pixels.

    The input convention of TensorFlow's MobileNets, such as ``../shared/models/mobilenet_v2_imagenet.pth``.

    Example:
        >>> TanhNormalize()(torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)).flatten()
        tensor([-1.,  0.,  1.])
    """

    def forward(self, images: Tensor) -> Tensor:
        """Scale ``(B, 3, H, W)`` images in ``[0, 1]`` to ``[-1, 1]``."""
        return images * 2 - 1


def with_input_norm(network: nn.Module, input_norm: InputNorm) -> nn.Module:
    """``network`` with the layer of ``input_norm`` in front, so that it takes images in ``[0, 1]``.

    Args:
        network: any module taking ``(B, 3, H, W)`` images.
        input_norm: ``"imagenet"`` (an [`ImageNetNormalize`][hiercam.models.ImageNetNormalize] in front),
            ``"tanh"`` (a [`TanhNormalize`][hiercam.models.TanhNormalize]) or ``"none"``.

    Returns:
        ``nn.Sequential(layer, network)``, or ``network`` itself for ``"none"``.

    Raises:
        ValueError: ``input_norm`` is unknown.

    Example:
        >>> net = with_input_norm(torch.nn.Identity(), "tanh")
        >>> type(net[0]).__name__, net(torch.ones(1, 3, 1, 1)).flatten().tolist()
        ('TanhNormalize', [1.0, 1.0, 1.0])
    """
    check_choice(input_norm, "input_norm", _MODES)
    layer = {"imagenet": ImageNetNormalize, "tanh": TanhNormalize}.get(input_norm)
    return network if layer is None else nn.Sequential(layer(), network)
