"""Class vectors from a checkpoint file, for ``hiercam hierarchy``: no model code needed, nothing executed."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from hiercam.pipeline.artifacts import safe_torch_load

__all__ = ["classifier_weight"]


def classifier_weight(path: str | os.PathLike[str], layer: str | None = None) -> Tensor:
    """The classifier weight ``(K, D)`` stored in a checkpoint, read with ``torch.load(weights_only=True)``.

    Accepted files: a state dict (``model.state_dict()``), a [`fit`][hiercam.fit] checkpoint (its ``"model"``
    entry), a dict with a ``"state_dict"`` entry, or a bare ``(K, D)`` tensor. Without ``layer``, a
    ``TwoBranchNet`` state dict gives the mean of its two branch classifiers (as
    [`class_embeddings`][hiercam.class_embeddings] does) and any other state dict its last 2-D ``*.weight``
    entry (the classifier of torchvision models); ``layer="fc"`` reads ``fc.weight``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read (damaged, not a torch file, or a pickle with code), holds no
            suitable weight, or ``layer`` names none.
    """
    data: Any = safe_torch_load(path, "cannot be read with torch.load(weights_only=True)")
    name = os.fspath(path)
    if isinstance(data, Tensor):
        if data.ndim != 2 or not data.is_floating_point():
            raise ValueError(f"{name!r} holds a tensor of shape {tuple(data.shape)}, not a (K, D) weight")
        return data.float()
    for wrapper in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict):
        raise ValueError(f"{name!r} holds neither a state dict nor a weight tensor")
    weights = {
        key: value
        for key, value in data.items()
        if isinstance(key, str)
        and isinstance(value, Tensor)
        and value.ndim == 2
        and value.is_floating_point()
    }
    if layer is not None:
        key = f"{layer}.weight"
        if key not in weights:
            raise ValueError(
                f"`layer` {layer!r}: {name!r} has no 2-D entry {key!r}; 2-D entries: {list(weights)}"
            )
        return weights[key].float()
    heads = [f"branches.{i}.classifier.weight" for i in (0, 1)]
    if all(head in weights for head in heads):
        return torch.stack([weights[head].float() for head in heads]).mean(0)
    candidates = [key for key in weights if key.endswith(".weight")]
    if not candidates:
        raise ValueError(f"{name!r} has no 2-D weight entry; pass `layer`")
    return weights[candidates[-1]].float()
