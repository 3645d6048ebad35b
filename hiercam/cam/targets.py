"""Any model output: choosing the scores (``output=``) and explaining any score of it (``targets=``).

A model may return a tensor, a tuple or list, a dict (torchvision's segmentation models return
``{"out": ..., "aux": ...}``), a namedtuple, a dataclass or any object. The extractors' ``output`` option
picks the tensor that holds the scores: a key (of a dict, or the field name of a namedtuple or a
dataclass), an index (of a tuple or list), or a callable on the whole output. By default the output itself
must be a tensor.

``targets`` (an argument of the call) explains one score per image, as pytorch-grad-cam's targets do: each
target is a callable that takes one image's selected output (the batch dimension removed: logits ``(K,)``,
a segmentation map ``(K, H, W)``) and returns a scalar. The target classes here follow pytorch-grad-cam's.

A target may also define ``mirrored()``: the target that explains the same thing in the horizontal mirror
image. [`MultiScaleCAM`][hiercam.MultiScaleCAM] with ``flip=True`` explains the mirror images with it
(``mirror_targets``): [`SemanticSegmentationTarget`][hiercam.SemanticSegmentationTarget] mirrors its mask,
the classifier targets are their own mirror. A target without it is used as it is on classifier outputs
``(K,)`` and refused on spatial outputs, whose region it cannot mirror.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from hiercam._validation import format_shape, is_int, type_name

__all__ = [
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "OutputArg",
    "SemanticSegmentationTarget",
    "Target",
    "TargetsArg",
    "mirror_targets",
    "select_output",
]

OutputArg = str | int | Callable[[Any], Tensor] | None
Target = Callable[[Tensor], Tensor]
TargetsArg = Target | Sequence[Target] | None


def _check_category(category: Any) -> int:
    if not is_int(category):
        raise TypeError(f"`category` must be a non-negative int, got {type_name(category)}")
    if int(category) < 0:
        raise ValueError(f"`category` must be a non-negative int, got {int(category)}")
    return int(category)


def _check_output(output: Any, name: str, ndim: int, category: int) -> Tensor:
    if not isinstance(output, Tensor) or output.ndim != ndim:
        got = format_shape(output.shape) if isinstance(output, Tensor) else type_name(output)
        shape = "(K,)" if ndim == 1 else "(K, H, W)"
        raise ValueError(f"{name} needs one image's output of shape {shape}, got {got}")
    if category >= output.shape[0]:
        raise ValueError(f"{name}: `category` {category} is out of range for {output.shape[0]} classes")
    return output


class _ClassTarget:
    """A target of one class of a classifier's logits ``(K,)``: ``category`` checked, shown by ``repr``."""

    def __init__(self, category: int) -> None:
        self.category = _check_category(category)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.category})"

    def mirrored(self) -> _ClassTarget:
        """The target of the mirror image: itself (a class score does not depend on positions)."""
        return self


class ClassifierOutputTarget(_ClassTarget):
    """The logit of class ``category``: ``output[category]`` for one image's logits ``(K,)``.

    Args:
        category: the class index.

    Examples:
        >>> import torch
        >>> ClassifierOutputTarget(1)(torch.tensor([0.5, 2.0, -1.0]))
        tensor(2.)
    """

    def __call__(self, output: Tensor) -> Tensor:
        """The score of one image's logits ``(K,)``."""
        return _check_output(output, repr(self), 1, self.category)[self.category]


class ClassifierOutputSoftmaxTarget(_ClassTarget):
    """The softmax probability of class ``category``: ``softmax(output)[category]`` for logits ``(K,)``.

    Args:
        category: the class index.

    Examples:
        >>> import torch
        >>> ClassifierOutputSoftmaxTarget(0)(torch.tensor([0.0, 0.0]))
        tensor(0.5000)
    """

    def __call__(self, output: Tensor) -> Tensor:
        """The score of one image's logits ``(K,)``."""
        return torch.softmax(_check_output(output, repr(self), 1, self.category), dim=-1)[self.category]


class SemanticSegmentationTarget:
    """The logits of class ``category`` summed over a mask: ``(output[category] * mask).sum()``.

    Args:
        category: the class index.
        mask: ``(H, W)`` weights of the pixels (0/1 or float; a NumPy array or a tensor), the size of the
            segmentation output.

    Raises:
        ValueError: ``mask`` is not 2-D, or, when called, ``output`` is not ``(K, H, W)`` with the mask's
            ``(H, W)``.

    Examples:
        >>> import torch
        >>> logits = torch.arange(8.0).reshape(2, 2, 2)  # 2 classes, 2 x 2 pixels
        >>> SemanticSegmentationTarget(1, torch.tensor([[1, 0], [0, 1]]))(logits)
        tensor(11.)
    """

    def __init__(self, category: int, mask: Any) -> None:
        self.category = _check_category(category)
        values = torch.as_tensor(mask)
        if values.ndim != 2:
            raise ValueError(f"`mask` must have shape (H, W), got {format_shape(values.shape)}")
        self.mask = values

    def __call__(self, output: Tensor) -> Tensor:
        """The score of one image's segmentation logits ``(K, H, W)``."""
        output = _check_output(output, repr(self), 3, self.category)
        if tuple(output.shape[-2:]) != tuple(self.mask.shape):
            raise ValueError(
                f"{self!r}: `mask` of shape {format_shape(self.mask.shape)} does not match the output's "
                f"spatial size {format_shape(output.shape[-2:])}"
            )
        mask = self.mask.to(device=output.device, dtype=output.dtype)
        return (output[self.category] * mask).sum()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.category}, mask {format_shape(self.mask.shape)})"

    def mirrored(self) -> SemanticSegmentationTarget:
        """The target of the horizontal mirror image: the same class over the mirrored mask.

        Examples:
            >>> import torch
            >>> SemanticSegmentationTarget(0, torch.tensor([[1, 0]])).mirrored().mask
            tensor([[0, 1]])
        """
        return SemanticSegmentationTarget(self.category, self.mask.flip(-1))


def check_output_selector(output: Any) -> OutputArg:
    """Validate the ``output`` option when the extractor is built."""
    if output is None or callable(output) or isinstance(output, str):
        return output  # type: ignore[no-any-return]
    if is_int(output):
        return int(output)
    raise TypeError(f"`output` must be None, a key, an index or a callable, got {type_name(output)}")


def select_output(value: Any, selector: OutputArg) -> Tensor:
    """The tensor of the model's output ``value`` that ``selector`` names (the output itself for ``None``)."""
    if selector is None:
        if isinstance(value, Tensor):
            return value
        raise ValueError(
            f"`model` returned {_describe(value)}; pass `output=` (a key, an index or a callable)"
        )
    if callable(selector):
        selected = selector(value)
    elif isinstance(value, Mapping) or (isinstance(selector, str) and _fields(value)):
        keys = list(value) if isinstance(value, Mapping) else _fields(value)
        if selector not in keys:
            listed = ", ".join(map(repr, keys))
            raise ValueError(
                f"`output` key {selector!r} is not in the output of `model` (its keys: {listed})"
            )
        selected = value[selector] if isinstance(value, Mapping) else getattr(value, str(selector))
    elif isinstance(value, Sequence) and isinstance(selector, int):
        if not -len(value) <= selector < len(value):
            raise ValueError(
                f"`output` index {selector} is out of range for `model`, which returned {_describe(value)}"
            )
        selected = value[selector]
    else:
        raise ValueError(f"`output` {selector!r} cannot select from {_describe(value)} returned by `model`")
    if not isinstance(selected, Tensor):
        raise ValueError(f"`output` {selector!r} selected {type_name(selected)}, not a tensor")
    return selected


def _fields(value: Any) -> list[str]:
    """The field names of a namedtuple or dataclass instance (empty for anything else)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return [str(name) for name in value._fields]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [item.name for item in dataclasses.fields(value)]
    return []


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a {type_name(value)} with keys {', '.join(map(repr, value))}"
    if _fields(value):
        return f"a {type_name(value)} with fields {', '.join(map(repr, _fields(value)))}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return f"a {type_name(value)} of {len(value)} items"
    return type_name(value)


def target_scores(selected: Tensor, targets: TargetsArg) -> Tensor:
    """Scores ``(B, 1)``: each image's target applied to that image's output ``selected[i]``."""
    batch = selected.shape[0]
    per_image = [targets] * batch if callable(targets) else list(targets or [])
    scores = []
    for index, (target, output) in enumerate(zip(per_image, selected, strict=True)):
        score = target(output)
        if not isinstance(score, Tensor) or score.numel() != 1 or not score.is_floating_point():
            got = format_shape(score.shape) if isinstance(score, Tensor) else type_name(score)
            raise ValueError(f"`targets[{index}]` must return a floating-point scalar tensor, got {got}")
        scores.append(score.reshape(()))
    return torch.stack(scores)[:, None]


def check_targets(targets: Any, batch: int) -> TargetsArg:
    """Validate ``targets`` before any work: a callable, or one callable per image."""
    if targets is None or callable(targets):
        return targets  # type: ignore[no-any-return]
    if isinstance(targets, Sequence) and not isinstance(targets, str):
        if len(targets) != batch:
            raise ValueError(f"`targets` must hold one target per image ({batch}), got {len(targets)}")
        for index, target in enumerate(targets):
            if not callable(target):
                raise TypeError(f"`targets[{index}]` must be callable, got {type_name(target)}")
        return targets
    raise TypeError(f"`targets` must be a callable or a sequence of callables, got {type_name(targets)}")


class _Unmirrored:
    """A target without ``mirrored()`` for the mirror images: kept on ``(K,)`` outputs, refused on others."""

    def __init__(self, target: Target, name: str) -> None:
        self.target, self.name = target, name

    def __call__(self, output: Tensor) -> Tensor:
        if isinstance(output, Tensor) and output.ndim >= 2:
            raise ValueError(
                f"{self.name} ({type_name(self.target)}) explains a spatial output "
                f"{format_shape(output.shape)}, which `flip=True` mirrors: give the target a `mirrored()` "
                "method returning the target of the mirror image (as hiercam.SemanticSegmentationTarget "
                "has), or pass `flip=False`"
            )
        return self.target(output)


def mirror_targets(targets: TargetsArg) -> TargetsArg:
    """The checked ``targets`` for the horizontal mirror images (see the module docstring).

    Examples:
        >>> import torch
        >>> mirror_targets([SemanticSegmentationTarget(1, torch.tensor([[1.0, 0.0]]))])
        [SemanticSegmentationTarget(1, mask (1, 2))]
    """
    if targets is None:
        return None
    if callable(targets):
        return _mirror(targets, "`targets`")
    return [_mirror(target, f"`targets[{index}]`") for index, target in enumerate(targets)]


def _mirror(target: Target, name: str) -> Target:
    mirrored = getattr(target, "mirrored", None)
    if callable(mirrored):
        result = mirrored()
        if not callable(result):
            raise TypeError(f"{name}.mirrored() must return a target (a callable), got {type_name(result)}")
        return result  # type: ignore[no-any-return]
    return _Unmirrored(target, name)
