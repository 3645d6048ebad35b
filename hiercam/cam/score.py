"""The Score-CAM family: channels weighted by the class scores of the images masked with them.

ScoreCAM (Wang et al., 2020), SSCAM (smoothed: noise on the masks) and ISCAM (integrated: masks scaled along
a path) mask each image with each upsampled, min-max normalised channel ``M_bc`` of the target activation
``A (B, C, h, w)`` and weight the channel by the softmax over channels of the masked images' class scores.
The ``B * S * N`` masked images (``S`` samples, ``N`` scored channels) go through the model ``batch_size`` at
a time under ``torch.inference_mode`` (``hiercam.cam._perturbation``); the peers run all of them once per
class, here the logits of every requested class come from the same forwards.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import check_float, check_generator, check_int
from hiercam.cam._heads import HeadState
from hiercam.cam._perturbation import PerturbationCAM, ScoreReader, row_parts
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg

__all__ = ["ScoreCAM", "SSCAM", "ISCAM"]

_MINMAX_EPS = 1e-8  # pytorch-grad-cam's and torchcam's guard in the min-max normalisation of the masks


class ScoreCAM(PerturbationCAM):
    """Score-CAM (Wang et al., 2020): channels weighted by the score of the input masked with them.

    For image ``b`` and channel ``c``, the mask ``M_bc`` is the channel ``A_bc`` upsampled to the input size
    (bilinear, ``align_corners=False``) and min-max normalised to ``[0, 1]`` (``(U - min) / (max - min +
    1e-8)``, so a constant channel gives an all-zero mask); the model scores ``images[b] * M_bc``. The
    weight of channel ``c`` for class ``k`` is ``softmax_c(score_k(images[b] * M_bc))``, and the map is
    ``ReLU(sum_c w_bkc * A_bc)`` on the raw activations. ``B * C`` masked images in all, ``batch_size`` per
    forward under ``torch.inference_mode``, every requested class read from the same logits.

    Against the peers (tests/test_cam_gradient_free.py gives the agreement):

    * pytorch-grad-cam 1.5.7 upsamples with ``nn.UpsamplingBilinear2d`` (``align_corners=True``) and then
      min-max normalises, as here; it runs the masked images once per class.
    * torchcam 0.5 min-max normalises at the feature resolution and then upsamples; its softmax is over
      ``score(masked) - score(images)``, which is the same softmax.
    * Where the target layer has the input's resolution (no upsampling) all three agree to float precision.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]; each head of a multi-head model is
            scored with its own logits).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        batch_size: masked images per forward pass, ``>= 1`` (memory: ``batch_size`` images through the model
            without an autograd graph, plus their masks).
        max_channels: score only each image's ``max_channels`` channels whose activation map has the largest
            standard deviation over positions (Faster Score-CAM, Tabayashi 2020; the softmax runs over
            them and the other channels get weight 0); ``None`` scores every channel.
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM].
        reshape: as for [`BaseCAM`][hiercam.BaseCAM]: token and channels-last outputs are read as maps
            (the masks are their channels).
        output: as for [`BaseCAM`][hiercam.BaseCAM]; ``targets`` work as with Grad-CAM.
        progress: show the progress of the masked forwards: a bar on a terminal (stderr), and lines on the
            ``"hiercam.cam"`` logger (INFO: every 10 s and when a call ends); ``False`` shows nothing.

    Raises:
        TypeError, ValueError: ``batch_size`` or ``max_channels`` is not an int ``>= 1``, ``progress`` not a
            bool (and as for [`BaseCAM`][hiercam.BaseCAM]).

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> cam = ScoreCAM(resnet18(num_classes=3), "layer4", batch_size=64)
        >>> cam(torch.randn(1, 3, 64, 64)).shape  # 512 masked images, all 3 classes from them
        torch.Size([1, 3, 64, 64])
        >>> fast = ScoreCAM(resnet18(num_classes=3), "layer4", max_channels=32)  # 32 masked images
        >>> fast(torch.randn(1, 3, 64, 64), 0).shape
        torch.Size([1, 1, 64, 64])
    """

    def _samples(self) -> int:
        """Masked copies per image and channel (``S``)."""
        return 1

    def _start(self, device: torch.device, per_image: int) -> None:
        """Set up a call's state (SSCAM: the noise generator); ``per_image`` rows belong to each image."""

    def _perturb(self, images: Tensor, masks: Tensor, sample: Tensor, rows: tuple[int, int]) -> Tensor:
        """The masked images of ``rows``: ``images (n, C, H, W)`` (a copy) times ``masks (n, 1, H, W)``."""
        return images.mul_(masks.to(images.dtype))

    def _weights(
        self,
        head: HeadState,
        features: Tensor,
        inputs: Tensor,
        logits: Tensor,
        scores: ScoreReader,
        channels: Tensor | None,
    ) -> Tensor:
        batch, total = features.shape[:2]
        count = total if channels is None else channels.shape[1]
        samples = self._samples()
        rows = batch * samples * count
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        flat = features.flatten(0, 1)  # (B * C, h, w)
        self._start(inputs.device, samples * count)
        perturbed = torch.empty(rows, scores.count, device=features.device)
        with self._progress(head, rows, "masked images") as progress:
            for start, stop in self._chunks(rows):
                image, sample, channel = row_parts(start, stop, samples, count, channels, features.device)
                masks = _masks(flat[image * total + channel].unsqueeze(1), size)
                masked = self._perturb(inputs[image], masks, sample, (start, stop))
                perturbed[start:stop] = self._forward_scores(head, masked, scores, image)
                progress.update(stop - start)
        mean = perturbed.view(batch, samples, count, -1).mean(dim=1)
        return torch.softmax(mean, dim=1).permute(2, 0, 1)


def _masks(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Channels ``(n, 1, h, w)`` upsampled to ``size`` and min-max normalised: masks ``(n, 1, H, W)``."""
    masks = maps.float()
    if tuple(masks.shape[-2:]) != size:
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    low = masks.amin(dim=(-2, -1), keepdim=True)
    return (masks - low) / (masks.amax(dim=(-2, -1), keepdim=True) - low + _MINMAX_EPS)


class SSCAM(ScoreCAM):
    """SS-CAM (Wang, Naidu et al., 2020): Score-CAM with its masks smoothed by Gaussian noise.

    For each of ``num_samples`` samples ``s``, the model scores ``images[b] * (M_bc + std * E_sbc)``,
    ``M_bc`` the Score-CAM mask (upsampled, min-max normalised) and ``E_sbc`` standard normal noise at the
    input resolution; the weight of channel ``c`` is ``softmax_c(mean_s(score_k))``, the map
    ``ReLU(sum_c w_c A_c)``.
    ``B * num_samples * C`` masked images (``N`` instead of ``C`` with ``max_channels``), ``batch_size`` per
    forward whatever sample they belong to.

    torchcam 0.5's ``SSCAM`` (the defaults ``num_samples=35``, ``std=2.0`` are its) adds the same noise to
    masks normalised at the feature resolution and then upsampled (as its ScoreCAM); with the same noise
    and a target layer at the input resolution the maps agree to float precision
    (tests/test_cam_score_family.py).

    **Noise.** One ``(H, W)`` standard normal plane per masked image, in the order ``(b, s, c)``, drawn on the
    CPU in float32 from ``generator`` (torch's global generator when ``None``, as torchcam) and moved to the
    images' device: the same draws on every device, and the same maps for every ``batch_size``. Like every
    random draw of the library (RandomCAM, SmoothGradCAMPlusPlus, ROAD), a generator advances with each
    call: pass a freshly seeded one for repeatable maps.

    Args:
        model: the classifier, as for [`ScoreCAM`][hiercam.ScoreCAM].
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        num_samples: noisy copies per image and channel, ``>= 1``.
        std: standard deviation of the noise added to the ``[0, 1]`` masks, ``>= 0`` (0: Score-CAM).
        generator: the CPU ``torch.Generator`` of the noise, or ``None`` for torch's global generator.
        batch_size: masked images per forward pass, ``>= 1``.
        max_channels: as for [`ScoreCAM`][hiercam.ScoreCAM] (the channels are chosen once, before the noise).
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM].
        reshape: as for [`ScoreCAM`][hiercam.ScoreCAM].
        output: as for [`BaseCAM`][hiercam.BaseCAM].
        progress: as for [`ScoreCAM`][hiercam.ScoreCAM].

    Raises:
        TypeError, ValueError: a bad ``num_samples``, ``std`` or ``generator``, and as for
            [`ScoreCAM`][hiercam.ScoreCAM].

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> model, x = resnet18(num_classes=3), torch.randn(1, 3, 64, 64)
        >>> seeded = torch.Generator().manual_seed(0)
        >>> cam = SSCAM(model, "layer4", num_samples=4, max_channels=16, generator=seeded)
        >>> maps = cam(x)  # 4 x 16 masked images, all 3 classes from them
        >>> cam.generator = torch.Generator().manual_seed(0)  # the same seed: the same noise
        >>> maps.shape, torch.equal(maps, cam(x))
        (torch.Size([1, 3, 64, 64]), True)
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        num_samples: int = 35,
        std: float = 2.0,
        generator: torch.Generator | None = None,
        batch_size: int = 32,
        max_channels: int | None = None,
        eigen_smooth: bool = False,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
        progress: bool = True,
    ) -> None:
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        self.std = check_float(std, "std", minimum=0.0)
        self.generator = check_generator(generator)
        super().__init__(
            model,
            target_layer,
            batch_size=batch_size,
            max_channels=max_channels,
            eigen_smooth=eigen_smooth,
            reshape=reshape,
            output=output,
            progress=progress,
        )

    def _extra_repr(self) -> str:
        seeded = ", seeded" if self.generator is not None else ""
        return f"{super()._extra_repr()}, num_samples={self.num_samples}, std={self.std:g}{seeded}"

    def _samples(self) -> int:
        return self.num_samples

    def _perturb(self, images: Tensor, masks: Tensor, sample: Tensor, rows: tuple[int, int]) -> Tensor:
        return images.mul_(masks.add_(self._noise(torch.empty_like(masks), rows)).to(images.dtype))

    def _noise(self, noise: Tensor, rows: tuple[int, int]) -> Tensor:
        """``std`` times standard normal planes, one per row, into ``noise (n, 1, H, W)``.

        Drawn plane by plane on the CPU, so that the stream does not depend on how rows are batched.
        """
        for i in range(rows[1] - rows[0]):
            noise[i].copy_(torch.randn(noise.shape[1:], generator=self.generator))
        return noise.mul_(self.std)


class ISCAM(ScoreCAM):
    """IS-CAM (Naidu et al., 2020): Score-CAM with the scores integrated over scaled masked images.

    For ``s = 1 .. N`` (``N = num_samples``) the model scores ``a_s * images[b] * M_bc`` with the cumulative
    coefficient ``a_s = sum_{j<=s} j / N = s (s + 1) / (2 N)``, ``M_bc`` the Score-CAM mask; the weight of
    channel ``c`` is ``softmax_c(mean_s(score_k))`` and the map ``ReLU(sum_c w_c A_c)``. ``B * N * C``
    masked images (``N`` samples times the scored channels), ``batch_size`` per forward.

    The coefficients are torchcam 0.5's (validated by the paper's authors, torch-cam issue #154): the
    paper's ``M_i = sum_{j<i} (j / N) X * A_k``, its index shifted by one, so the last copy is
    ``(N + 1) / 2`` times the masked image, not the image itself. With a target layer at the input
    resolution the maps equal torchcam's to float precision (its masks are normalised before upsampling,
    as for [`ScoreCAM`][hiercam.ScoreCAM]).

    Args:
        model: the classifier, as for [`ScoreCAM`][hiercam.ScoreCAM].
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        num_samples: integration steps ``N``, ``>= 1`` (torchcam's default 10).
        batch_size: masked images per forward pass, ``>= 1``.
        max_channels: as for [`ScoreCAM`][hiercam.ScoreCAM].
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM].
        reshape: as for [`ScoreCAM`][hiercam.ScoreCAM].
        output: as for [`BaseCAM`][hiercam.BaseCAM].
        progress: as for [`ScoreCAM`][hiercam.ScoreCAM].

    Raises:
        TypeError, ValueError: a bad ``num_samples``, and as for [`ScoreCAM`][hiercam.ScoreCAM].

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> cam = ISCAM(resnet18(num_classes=3), "layer4", num_samples=4, max_channels=16)
        >>> cam(torch.randn(1, 3, 64, 64), [0, 2]).shape  # 4 x 16 masked images
        torch.Size([1, 2, 64, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        num_samples: int = 10,
        batch_size: int = 32,
        max_channels: int | None = None,
        eigen_smooth: bool = False,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
        progress: bool = True,
    ) -> None:
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        super().__init__(
            model,
            target_layer,
            batch_size=batch_size,
            max_channels=max_channels,
            eigen_smooth=eigen_smooth,
            reshape=reshape,
            output=output,
            progress=progress,
        )
        self._coefficients: Tensor | None = None

    def _extra_repr(self) -> str:
        return f"{super()._extra_repr()}, num_samples={self.num_samples}"

    def _samples(self) -> int:
        return self.num_samples

    def _start(self, device: torch.device, per_image: int) -> None:
        values, total = [], 0.0
        for step in range(1, self.num_samples + 1):
            total += step / self.num_samples
            values.append(total)
        self._coefficients = torch.tensor(values, device=device)

    def _perturb(self, images: Tensor, masks: Tensor, sample: Tensor, rows: tuple[int, int]) -> Tensor:
        coefficients: Any = self._coefficients
        scale = coefficients[sample].to(images.dtype).view(-1, 1, 1, 1)
        return images.mul_(masks.to(images.dtype)).mul_(scale)
