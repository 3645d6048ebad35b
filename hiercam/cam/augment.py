"""Test-time augmentation for any CAM method: IRN's multi-scale + horizontal-flip aggregation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hiercam._validation import check_choice, check_scales, type_name, values_checked
from hiercam.cam._checks import check_elements, check_images, check_size
from hiercam.cam._classes import ClassesArg, ClassRequest, parse_classes
from hiercam.cam._release import Releasable
from hiercam.cam.engine import BaseCAM, SizeArg
from hiercam.cam.targets import TargetsArg, mirror_targets
from hiercam.maps import NormalizeMode, normalize_maps

__all__ = ["MultiScaleCAM", "IRN_SCALES"]

IRN_SCALES: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
"""The scales of IRN's ``make_cam.py`` (``--cam_scales``, Ahn et al., 2019)."""


class MultiScaleCAM(Releasable):
    """Any CAM extractor, aggregated over rescaled and horizontally flipped copies of the images (IRN).

    For every scale ``s`` the images are resized to ``(round(H * s), round(W * s))`` (bilinear,
    ``align_corners=False``), and, with ``flip``, batched together with their mirror images, so that each
    scale is **one** call of ``cam``: one forward (and, for gradient methods, one batched backward) for all
    requested classes. Each pass's ReLU'd maps are resized to the output size (the mirrored ones flipped
    back), optionally normalised (``pass_normalize``), and averaged; the mean is then normalised per image
    and class (``normalize``).

    **IRN.** IRN's ``step/make_cam.py`` runs each scale on the image and its flip, adds the two ReLU'd CAMs
    (the flip flipped back), resizes the sum bilinearly (``align_corners=False``) to the output size, sums
    over scales, and divides each class map by its maximum (``+ 1e-5``). With the defaults
    (``scales=IRN_SCALES, flip=True, pass_normalize=None``, ``normalize="max"``) this is that computation
    for any method: resizing commutes with the sum, and the mean differs from IRN's sum by the number of
    passes, which the normalisation removes. IRN rescales the PIL image bicubically before normalising it;
    here the image tensor is resized bilinearly.

    **pytorch-grad-cam's** ``aug_smooth`` uses ttach: a horizontal flip times intensity factors
    ``(0.9, 1, 1.1)``, no rescaling, each pass min-max normalised before the mean. ``scales=(1.0,),
    flip=True, pass_normalize="minmax"`` with ``normalize=None`` is that mean without the intensity
    factors; on a model whose maps scale with the input's intensity (no biases) it is the same map.

    Args:
        cam: any extractor ([`GradCAM`][hiercam.GradCAM], [`ScoreCAM`][hiercam.ScoreCAM], ...); it is
            called, never modified.
        scales: image scales, positive; the default is IRN's ``(1.0, 0.5, 1.5, 2.0)``.
        flip: also run the horizontal mirror images.
        pass_normalize: normalisation of each pass's maps before averaging: ``None`` (IRN: raw maps, so a
            scale with stronger activations counts more), ``"max"`` or ``"minmax"``.

    Raises:
        TypeError: ``cam`` is not a CAM extractor, or ``scales``/``flip`` have the wrong type.
        ValueError: ``scales`` is empty or holds a non-positive or non-finite scale; ``pass_normalize`` is
            unknown.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> import hiercam
        >>> cam = MultiScaleCAM(hiercam.GradCAM(resnet18(num_classes=4), "layer4"), scales=(1.0, 0.5))
        >>> maps = cam(torch.randn(2, 3, 64, 64))  # 2 calls of GradCAM, each on 4 images
        >>> maps.shape, cam.logits.shape
        (torch.Size([2, 4, 64, 64]), torch.Size([2, 4]))
    """

    def __init__(
        self,
        cam: BaseCAM,
        scales: Sequence[float] = IRN_SCALES,
        *,
        flip: bool = True,
        pass_normalize: NormalizeMode | None = None,
    ) -> None:
        if not isinstance(cam, BaseCAM):
            raise TypeError(f"`cam` must be a CAM extractor (a hiercam.BaseCAM), got {type_name(cam)}")
        if not isinstance(flip, bool):
            raise TypeError(f"`flip` must be a bool, got {type_name(flip)}")
        self.cam = cam
        self.scales = check_scales(scales)
        self.flip = flip
        check_choice(pass_normalize, "pass_normalize", ("max", "minmax", None))
        self.pass_normalize = pass_normalize
        self.logits: Tensor | None = None
        self.classes: Tensor | None = None
        self._top: Tensor | None = None  # the classes ``(B, k)`` chosen by ``top_k`` in the current call

    def __call__(
        self,
        images: Tensor,
        classes: ClassesArg = None,
        *,
        top_k: int | None = None,
        targets: TargetsArg = None,
        size: SizeArg = "input",
        normalize: NormalizeMode | None = "max",
        softmax_over: Tensor | None = None,
    ) -> Tensor:
        """Aggregated maps for a batch; the arguments are those of [`BaseCAM`][hiercam.BaseCAM]'s call.

        Args:
            images: input batch ``(B, C, H, W)``.
            classes: as for the wrapped extractor.
            top_k: each image's ``top_k`` highest-scoring classes, chosen once from the logits of the first
                scale's unflipped images and explained in every pass; their indices go to ``classes``.
            targets: as for the wrapped extractor (one target per image of ``images``). With ``flip`` the
                mirror images are explained by each target's ``mirrored()`` (a
                [`SemanticSegmentationTarget`][hiercam.SemanticSegmentationTarget] with its mask mirrored); a
                target without it is refused on a spatial output (``hiercam.cam.targets``).
            size: ``"input"``, an explicit ``(H, W)``, or ``"feature"``: the resolution of the first scale's
                maps (the target layer's resolution at the input size for the default scales).
            normalize: normalisation of the averaged maps: ``"max"`` (IRN), ``"minmax"`` or ``None``.
            softmax_over: as for the wrapped extractor: each pass explains the log-softmax over the image's
                classes, with that pass's logits.

        Returns:
            Maps ``(B, K', H', W')`` in float32. ``logits`` keeps the logits of the first scale's (unflipped)
            images, ``classes`` the class of every map ``(B, K')`` (as for the wrapped extractor).

        Raises:
            TypeError, ValueError: as for the wrapped extractor, and a scale that shrinks the images below
                one pixel or makes them hold more than ``MAX_ELEMENTS`` values (``2**31``, 8 GiB of
                float32, with the mirror images; naming ``scales``).
        """
        check_images(images)
        parse_classes(classes, images.shape[0], top_k)  # the form of both, before any work
        if top_k is not None and (targets is not None or softmax_over is not None):
            raise ValueError("`top_k` explains classes: pass no `targets` and no `softmax_over` with it")
        target = check_size(size, images)
        check_choice(normalize, "normalize", ("max", "minmax", None))
        height, width = int(images.shape[-2]), int(images.shape[-1])
        sizes = [(round(height * s), round(width * s)) for s in self.scales]
        for scale, (h, w) in zip(self.scales, sizes, strict=True):
            if h < 1 or w < 1:
                raise ValueError(
                    f"`scales` {scale} shrinks {height}x{width} `images` to {h}x{w}: use a larger scale"
                )
            copies = images.shape[0] * images.shape[1] * (2 if self.flip else 1)
            what = f"scale {scale}: the {h}x{w} images{' and their mirror images' if self.flip else ''}"
            check_elements(copies * h * w, "scales", what, "use a smaller scale")
        total: Tensor | None = None
        passes = 0
        self._top = None
        for h, w in sizes:
            scaled = images
            if (h, w) != (height, width):
                scaled = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
            for maps, logits in self._passes(
                scaled, classes, top_k, targets, "feature" if target is None else target, softmax_over
            ):
                if total is None:
                    total = torch.zeros_like(maps)
                    target = (int(maps.shape[-2]), int(maps.shape[-1]))
                    self.logits = logits
                total += maps
                passes += 1
        if total is None:  # pragma: no cover - scales is never empty
            raise RuntimeError("no pass ran")
        self.classes = self.cam.classes if self._top is None else self._top
        self._top = None
        return normalize_maps(total / passes, normalize, validate_args=False)

    def _passes(
        self,
        images: Tensor,
        classes: ClassesArg,
        top_k: int | None,
        targets: TargetsArg,
        size: SizeArg,
        softmax_over: Tensor | None,
    ) -> list[tuple[Tensor, Tensor]]:
        """(maps, logits of the unflipped images) of one scale: one call, or two for per-image requests.

        ``images`` are resized copies of the checked input: the wrapped extractor does not check their
        finiteness again (``values_checked``), nor that of their mirror images.
        """
        cam, norm = self.cam, self.pass_normalize
        if top_k is not None:
            return self._top_k_passes(images, top_k, size)
        options: dict[str, Any] = {"size": size, "normalize": norm, "softmax_over": softmax_over}
        if not self.flip:
            with values_checked(images):
                maps = cam(images, classes, targets=targets, **options)
            return [(maps, self._logits())]
        mirrored = images.flip(-1)
        if isinstance(classes, Tensor) or targets is not None:
            # Per image ((B, K) masks, (B,) classes, targets): the two halves run separately.
            with values_checked(images, mirrored):
                maps = cam(images, classes, targets=targets, **options)
                logits = self._logits()
                mirror = mirror_targets(targets)
                flipped = cam(mirrored, classes, targets=mirror, **options).flip(-1)
            return [(maps, logits), (flipped, logits)]
        batch = images.shape[0]
        if softmax_over is not None:  # the mirror images have the same classes
            options["softmax_over"] = torch.cat([softmax_over, softmax_over])
        pair = torch.cat([images, mirrored])
        with values_checked(pair):
            both = cam(pair, classes, **options)
        logits = self._logits()[:batch]
        return [(both[:batch], logits), (both[batch:].flip(-1), logits)]

    def _top_k_passes(self, images: Tensor, top_k: int, size: SizeArg) -> list[tuple[Tensor, Tensor]]:
        """The passes of one scale for ``top_k``: the classes chosen by the first pass, then reused."""
        cam, out_size = self.cam, check_size(size, images)
        passes: list[tuple[Tensor, Tensor]] = []
        for mirror in (False, True) if self.flip else (False,):
            pixels = images.flip(-1) if mirror else images
            with values_checked(pixels):
                if self._top is None:
                    maps = cam(pixels, top_k=top_k, size=size, normalize=self.pass_normalize)
                    self._top = cam.classes
                else:
                    request = ClassRequest(None, None, self._top)
                    maps = cam._explain(pixels, request, None, out_size, self.pass_normalize, None)
            if not passes:
                logits = self._logits()
            passes.append((maps.flip(-1) if mirror else maps, logits))
        return passes

    def _logits(self) -> Tensor:
        if self.cam.logits is None:  # pragma: no cover - set by every call
            raise RuntimeError("the wrapped extractor kept no logits")
        return self.cam.logits

    def remove(self) -> None:
        """Release the wrapped extractor (its `remove()`); later calls raise."""
        self.logits = None
        self.cam.remove()

    def __repr__(self) -> str:
        return (
            f"MultiScaleCAM({self.cam!r}, scales={self.scales}, flip={self.flip}, "
            f"pass_normalize={self.pass_normalize!r})"
        )
