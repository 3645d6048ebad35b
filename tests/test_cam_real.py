"""Grad-CAM of a real ImageNet classifier on a real photo (skipped when ../shared is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import hiercam

EGYPTIAN_CAT = 285


def load_photo(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's preprocessing (short side 224, centre crop 224), then this model's ``x / 127.5 - 1``."""
    from PIL import Image
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    with Image.open(path) as photo:
        image = center_crop(resize(pil_to_tensor(photo.convert("RGB")), 224, antialias=True), 224)
    return image, image.float()[None] / 127.5 - 1


@pytest.mark.shared
def test_cat_gradcam_peaks_on_the_cat(
    shared_dir: Path, imagenet_mobilenet: nn.Module, tmp_path: Path
) -> None:
    image, x = load_photo(shared_dir / "images" / "cat.png")
    with hiercam.GradCAM(imagenet_mobilenet) as cam:
        logits = imagenet_mobilenet(x)
        predicted = int(logits.argmax())
        heat = cam(x, predicted)[0, 0]
        assert cam.logits is not None
        torch.testing.assert_close(cam.logits, logits.detach())
    assert predicted == EGYPTIAN_CAT
    assert cam.target_layer == "features"
    row, col = divmod(int(heat.argmax()), heat.shape[1])
    assert 56 <= row < 168, f"peak row {row} is outside the central half"
    assert 56 <= col < 168, f"peak column {col} is outside the central half"
    assert heat.max() == 1.0

    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(3, 3))
    axis.imshow(image.permute(1, 2, 0).numpy())
    axis.imshow(heat.numpy(), cmap="jet", alpha=0.5)
    axis.set_axis_off()
    out = tmp_path / "cat_gradcam.png"
    figure.savefig(out)
    plt.close(figure)
    assert out.stat().st_size > 10_000
