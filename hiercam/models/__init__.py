"""Models: backbones that return feature maps ``(B, C, h, w)``."""

from hiercam.models.small import SmallConvNet, small_convnet

__all__ = ["SmallConvNet", "small_convnet"]
