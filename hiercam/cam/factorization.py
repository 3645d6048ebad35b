"""Deep feature factorization: concepts found by NMF of a layer's activations, each scored by the classifier.

DFF (Collins et al., 2018) is not a class activation map: its maps belong to *concepts* found in the
images, not to classes, so it is not a [`BaseCAM`][hiercam.BaseCAM] method and not in
[`METHODS`][hiercam.METHODS] (``hiercam cam --method``). Weighting the concept maps by their classifier score
for a class ``k`` would not give a new class map either: with the raw scores ``W[k] . c_j`` that sum is CAM
of the factorized (low-rank) activation, and with softmax scores an ad hoc mixture no paper defines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from hiercam._validation import all_finite, check_choice, check_int, check_tensor, should_check, type_name
from hiercam.cam._checks import check_images, check_size
from hiercam.cam._heads import HeadState, MapPlan, resolve_layer
from hiercam.cam._release import Releasable
from hiercam.cam.eigen import non_finite_activation
from hiercam.cam.engine import BaseCAM, SizeArg
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg
from hiercam.maps import NormalizeMode, normalize_maps, resize_maps
from hiercam.protocols import MultiHeadModel

__all__ = ["DeepFeatureFactorization", "FeatureFactorization", "deep_feature_factorization"]

ClassifierArg = nn.Module | Callable[[Tensor], Tensor] | str | Literal["auto"] | None


@dataclass(frozen=True)
class FeatureFactorization:
    """The result of [`DeepFeatureFactorization`][hiercam.DeepFeatureFactorization].

    Attributes:
        concept_maps: ``(B, N, H', W')`` float32: where each of the ``N`` concepts is in each image (the NMF
            coefficients, resized and normalised as asked).
        concepts: ``(N, C)`` float32: each concept's embedding in the target layer's channels.
        concept_scores: ``(N, K)``: the classifier's output for each concept embedding (logits; a softmax
            over ``K`` gives pytorch-grad-cam's ``run_dff_on_image`` label probabilities), or ``None``
            without a classifier.
    """

    concept_maps: Tensor
    concepts: Tensor
    concept_scores: Tensor | None

    def top_classes(self, k: int = 1) -> Tensor:
        """``(N, k)`` int64: the ``k`` highest-scoring classes of every concept, best first.

        Raises:
            ValueError: there are no ``concept_scores``, or ``k`` is not in ``[1, K]``.
        """
        if self.concept_scores is None:
            raise ValueError("no `concept_scores`: the factorization was computed without a classifier")
        k = check_int(k, "k", minimum=1, maximum=int(self.concept_scores.shape[1]))
        return self.concept_scores.topk(k, dim=1).indices


def deep_feature_factorization(
    activations: Tensor, n_components: int = 5, *, max_iter: int = 200, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Non-negative matrix factorization of a batch of activations into concepts and their maps.

    As pytorch-grad-cam's ``dff``: the activations ``A (B, C, h, w)`` are arranged as a ``(C, B * h * w)``
    matrix (every position of every image is a sample, so the concepts are shared by the batch), each
    channel is shifted by its minimum ``o_c`` to be non-negative, and scikit-learn's
    ``NMF(n_components, init="random", random_state=seed, max_iter=max_iter)`` factorizes it into
    ``W (C, N)`` and ``H (N, B * h * w)``. The concepts are ``W + o`` (each column moved back by the
    channel offsets) and the maps are ``H`` as ``(B, N, h, w)``. scikit-learn runs on the CPU in float32
    (the factorization is an iterative solver, called once per batch); the results come back to the
    activations' device.

    Args:
        activations: ``(B, C, h, w)``, floating point, finite.
        n_components: the number of concepts ``N``, ``>= 1``.
        max_iter: NMF's iteration limit (a ``ConvergenceWarning`` says when it was reached).
        seed: the seed of NMF's random initialisation.

    Returns:
        ``(concepts (N, C), maps (B, N, h, w))``, float32 on the activations' device; the maps are the raw
        non-negative coefficients.

    Raises:
        TypeError: ``activations`` is not a floating-point tensor, or an option is not an int.
        ValueError: ``activations`` is not 4-dimensional or holds NaN or infinite values, or an option is
            out of range.

    Examples:
        >>> import torch
        >>> a = torch.zeros(1, 4, 2, 2)
        >>> a[0, :2, 0, 0] = 1.0  # concept 1: channels 0 and 1, top-left
        >>> a[0, 2:, 1, 1] = 2.0  # concept 2: channels 2 and 3, bottom-right
        >>> concepts, maps = deep_feature_factorization(a, 2)
        >>> concepts.shape, maps.shape
        (torch.Size([2, 4]), torch.Size([1, 2, 2, 2]))
        >>> bool((concepts.T @ maps.flatten(2)[0]).sub(a.flatten(2)[0]).abs().max() < 1e-3)  # A = W H
        True
    """
    check_tensor(activations, "activations", dims="B, C, h, w", floating=True)
    n_components = check_int(n_components, "n_components", minimum=1)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    if should_check() and not all_finite(activations):
        raise ValueError("`activations` must be finite, got NaN or infinite values")
    from sklearn.decomposition import NMF  # imported here: scikit-learn is slow to import

    batch, channels, height, width = activations.shape
    matrix = activations.detach().float().transpose(0, 1).reshape(channels, -1).cpu().numpy()
    offset = matrix.min(axis=1)
    shifted = matrix - offset[:, None]
    if not shifted.any():  # constant channels: nothing to factorize (NMF would divide by zero)
        weights = np.zeros((channels, n_components), dtype=np.float32)
        coefficients = np.zeros((n_components, matrix.shape[1]), dtype=np.float32)
    else:
        nmf = NMF(n_components=n_components, init="random", random_state=seed, max_iter=max_iter)
        weights = nmf.fit_transform(shifted)
        coefficients = nmf.components_
    concepts = torch.from_numpy(np.ascontiguousarray((weights + offset[:, None]).T, dtype=np.float32))
    maps = torch.from_numpy(np.ascontiguousarray(coefficients, dtype=np.float32))
    maps = maps.reshape(n_components, batch, height, width).transpose(0, 1)
    return concepts.to(activations.device), maps.contiguous().to(activations.device)


class _ActivationReader(BaseCAM):
    """The engine's forward (checks, eval mode, hooks, ``reshape``, ``output``) that keeps the activation."""

    _needs_graph: ClassVar[bool] = False

    def __init__(self, model: nn.Module, target_layer: nn.Module | str | None, **options: Any) -> None:
        super().__init__(model, target_layer, closed_form=False, **options)
        self.features: Tensor | None = None

    def _head_maps(self, head: HeadState, logits: Tensor, plan: MapPlan) -> Tensor:
        _, features = self._features(head)
        if should_check() and not all_finite(features):
            raise non_finite_activation(head)
        self.features = features
        return features.new_zeros(features.shape[0], 1, 1, 1)


def _any_score(output: Tensor) -> Tensor:
    """A scalar that depends on the whole output (only for the automatic choice of the layer)."""
    return output.float().sum()


class DeepFeatureFactorization(Releasable):
    """Deep feature factorization (Collins et al., 2018): concepts of a batch, where they are, what they are.

    One forward pass (under ``no_grad``, eval mode restored, a hook on the target layer only during the
    call) reads the target activation ``A (B, C, h, w)``;
    [`deep_feature_factorization`][hiercam.deep_feature_factorization] splits it into ``N`` concepts
    shared by the batch, and the classifier scores each concept embedding. pytorch-grad-cam's
    ``DeepFeatureFactorization`` with ``computation_on_concepts=classifier`` (and its ``run_dff_on_image``,
    for a batch). Not a CAM method (see ``hiercam.cam.factorization``): the maps are per concept, not per
    class.

    Args:
        model: the network; any output (only the target layer's activation is read).
        target_layer: one layer (a module or its dotted name), or ``None`` for the engine's automatic
            choice (see [`BaseCAM`][hiercam.BaseCAM]).
        classifier: what scores a concept embedding ``(N, C)``: ``"auto"`` (default) the model's only
            ``nn.Linear`` whose input has the target layer's ``C`` channels (none or several: no scores); a
            module, its dotted name, or any callable ``(N, C) -> (N, K)``; ``None`` for no scores.
        reshape: as for [`BaseCAM`][hiercam.BaseCAM] (token and channels-last outputs are read as maps).
        output: as for [`BaseCAM`][hiercam.BaseCAM]; only used for the automatic choice of the layer.
        max_iter: NMF's iteration limit, ``>= 1``.
        seed: NMF's seed, ``>= 0``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``classifier`` is neither ``"auto"``, ``None``, a
            name nor a callable.
        ValueError: ``model`` is a multi-head model, ``target_layer`` is a list, or a name is not a
            submodule.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> dff = DeepFeatureFactorization(resnet18(num_classes=10), "layer4")
        >>> result = dff(torch.randn(2, 3, 64, 64), n_components=3)
        >>> result.concept_maps.shape, result.concepts.shape, result.concept_scores.shape
        (torch.Size([2, 3, 64, 64]), torch.Size([3, 512]), torch.Size([3, 10]))
        >>> result.top_classes(2).shape  # the two best classes of every concept
        torch.Size([3, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        classifier: ClassifierArg = "auto",
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
        max_iter: int = 200,
        seed: int = 0,
    ) -> None:
        if isinstance(model, MultiHeadModel):
            raise ValueError(
                f"DeepFeatureFactorization reads one layer; {type_name(model)} is a multi-head model: pass "
                "the branch to factorize as `model`"
            )
        if isinstance(target_layer, (list, tuple)):
            raise ValueError("DeepFeatureFactorization reads one layer: `target_layer` must not be a list")
        self.max_iter = check_int(max_iter, "max_iter", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
        self._reader = _ActivationReader(model, target_layer, reshape=reshape, output=output)
        self.model = model
        self.classifier = self._check_classifier(model, classifier)

    @property
    def target_layer(self) -> str | None:
        """Dotted name of the target layer (``None`` until chosen on the first call when not given)."""
        return self._reader.target_layer

    def __call__(
        self,
        images: Tensor,
        n_components: int = 5,
        *,
        size: SizeArg = "input",
        normalize: NormalizeMode | None = "minmax",
    ) -> FeatureFactorization:
        """Factorize the target activation of a batch into ``n_components`` concepts.

        Args:
            images: input batch ``(B, C, H, W)``, floating point, finite, on the model's device.
            n_components: the number of concepts ``N`` (pytorch-grad-cam's ``run_dff_on_image`` uses 5).
            size: the size of the concept maps: ``"input"`` (bilinear upsampling to ``(H, W)``),
                ``"feature"`` or an explicit ``(H, W)``.
            normalize: each concept map of each image rescaled: ``"minmax"`` (default, as pytorch-grad-cam),
                ``"max"`` or ``None`` (the raw NMF coefficients).

        Returns:
            A [`FeatureFactorization`][hiercam.FeatureFactorization]: ``concept_maps (B, N, H', W')``,
            ``concepts (N, C)``, ``concept_scores (N, K)`` or ``None``.

        Raises:
            TypeError, ValueError: as for a CAM call, or ``n_components`` is not an int ``>= 1``.
        """
        n_components = check_int(n_components, "n_components", minimum=1)
        check_choice(normalize, "normalize", ("max", "minmax", None))
        check_images(images)
        out_size = check_size(size, images)
        self._reader(images, targets=_any_score, size="feature", normalize=None)
        features, self._reader.features = self._reader.features, None
        if features is None:  # pragma: no cover - the reader sets it
            raise RuntimeError("no activation captured")
        concepts, maps = deep_feature_factorization(
            features, n_components, max_iter=self.max_iter, seed=self.seed
        )
        maps = normalize_maps(resize_maps(maps, out_size), normalize)
        return FeatureFactorization(maps, concepts, self._scores(concepts))

    def remove(self) -> None:
        """Release the extractor; later calls raise. Safe to call twice (no hook outlives a call)."""
        self._reader.remove()

    def __repr__(self) -> str:
        layer = repr(self.target_layer) if self.target_layer is not None else "<chosen on first call>"
        scores = "none" if self.classifier is None else type_name(self.classifier)
        return f"DeepFeatureFactorization(target_layer={layer}, classifier={scores})"

    def _scores(self, concepts: Tensor) -> Tensor | None:
        classifier = self.classifier
        if isinstance(classifier, str):  # "auto": the one linear layer that takes C inputs
            linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
            fitting = [m for m in linears if m.in_features == concepts.shape[1]]
            if len(fitting) != 1:
                return None
            classifier = fitting[0]
        if classifier is None:
            return None
        parameter = next(iter(classifier.parameters()), None) if isinstance(classifier, nn.Module) else None
        inputs = concepts if parameter is None else concepts.to(parameter.device, parameter.dtype)
        with torch.no_grad():
            scores = classifier(inputs)
        if not isinstance(scores, Tensor) or scores.ndim != 2 or scores.shape[0] != concepts.shape[0]:
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type_name(scores)
            raise ValueError(f"`classifier` must map the concepts (N, C) to scores (N, K), got {got}")
        return scores.float()

    @staticmethod
    def _check_classifier(
        model: nn.Module, classifier: object
    ) -> nn.Module | Callable[[Tensor], Tensor] | str | None:
        if classifier is None or (isinstance(classifier, str) and classifier == "auto"):
            return classifier
        if isinstance(classifier, str):
            return resolve_layer(model, classifier, "classifier")[1]
        if not callable(classifier):
            raise TypeError(
                "`classifier` must be 'auto', None, a module, its name or a callable, got "
                f"{type_name(classifier)}"
            )
        return classifier
