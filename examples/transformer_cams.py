"""Grad-CAM of vision transformers: token outputs read as maps, the layer chosen for you.

A ViT's blocks output tokens `(B, N, C)`: a class token (and maybe register tokens) then the patch grid.
hiercam chooses the last block's `norm1` (the layer pytorch-grad-cam's docs recommend), infers the grid
from the token count and the image size, drops the prefix tokens and says so in `repr`. Models here have
random weights so that the example runs offline in seconds; load your trained weights instead.

Run: python examples/transformer_cams.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import hiercam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(the example is already quick)")
    parser.parse_args()
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)

    # 1. torchvision's VisionTransformer (a small one; vit_b_16 works the same way at 224 x 224).
    vit = VisionTransformer(
        image_size=64, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision starts the head at zero: no gradients
    with hiercam.GradCAM(vit) as cam:
        maps = cam(images, torch.tensor([3, 7]))  # one class per image
        print(
            cam
        )  # target_layer='encoder.layers.encoder_layer_1.ln_1', read as tokens(grid=(8, 8), prefix=1)
        print(f"maps {tuple(maps.shape)}")

    # 2. A layer of your choice, with the grid given explicitly (or any reshape_transform-like callable).
    layer = "encoder.layers.encoder_layer_0.ln_1"
    explicit = hiercam.GradCAM(vit, layer, reshape=hiercam.TokenReshape((8, 8), prefix=1))
    print(f"explicit grid: maps {tuple(explicit(images, 3).shape)}")

    # 3. Without the automatic reshape, a transformer is a clear error, never a silently wrong map.
    try:
        hiercam.GradCAM(vit, reshape=None)(images)
    except ValueError as error:
        print(f"reshape=None: {str(error)[:60]}...")

    # 4. timm models (pip install hiercam[timm]): ViT with register tokens, and Swin's channels-last maps.
    try:
        import timm
    except ImportError:
        print("timm is not installed: skipping the timm models")
        return
    reg = timm.create_model("vit_tiny_patch16_224", img_size=64, reg_tokens=4, num_classes=10).eval()
    with hiercam.GradCAM(reg) as cam:
        cam(images, torch.tensor([3, 7]))
        print(cam)  # prefix=5: the class token and 4 registers are dropped


if __name__ == "__main__":
    main()
