"""Several CAM metrics fed by one call per batch, for evaluation loops and the pipeline."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, cast

from torch import Tensor, nn

from hiercam._validation import type_name
from hiercam.metrics._base import Metric

__all__ = ["MetricGroup"]


def _keywords(metric: Metric) -> tuple[frozenset[str], frozenset[str]]:
    """The keyword-only arguments of ``metric.update``: required (``masks``, ``images``...), optional."""
    parameters = inspect.signature(metric.update).parameters.values()
    keywords = [p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    required = frozenset(p.name for p in keywords if p.default is inspect.Parameter.empty)
    return required, frozenset(p.name for p in keywords) - required


def _flatten(name: str, value: object, into: dict[str, float | list[float]]) -> None:
    if isinstance(value, Tensor):
        into[name] = float(value) if value.ndim == 0 else value.detach().double().cpu().reshape(-1).tolist()
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for field in value._fields:
            _flatten(f"{name}.{field}", getattr(value, field), into)


class MetricGroup(nn.Module):
    """A named group of CAM metrics: ``update(maps, labels, **truth)`` gives each the keywords it takes.

    ``MeanIoU`` and ``PxAP`` take ``masks=``, ``LocalizationError`` and ``MaxBoxAcc`` ``boxes=``, the
    faithfulness metrics ``images=``: one call per batch feeds them all, so an evaluation loop (or the
    pipeline) needs no knowledge of which metric reads what. ``compute`` returns plain numbers keyed by
    name (the fields of a result tuple as ``name.field``), ready for a report. The metrics are the
    ``nn.ModuleDict`` ``group.metrics`` (also ``group["name"]``): ``.to(device)``, ``state_dict`` and the
    sync across processes work as for each metric.

    Args:
        metrics: the metrics by name.

    Raises:
        TypeError: a value that is not a hiercam [`Metric`][hiercam.metrics.Metric].

    Examples:
        >>> import torch
        >>> from hiercam.metrics import MaxBoxAcc, MeanIoU, PxAP
        >>> group = MetricGroup({"miou": MeanIoU(num_classes=2), "boxacc": MaxBoxAcc(), "pxap": PxAP()})
        >>> maps = torch.zeros(1, 1, 8, 8)
        >>> maps[0, 0, 2:5, 2:5] = 1.0
        >>> masks = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> masks[0, 2:5, 2:5] = 1
        >>> group.update(maps, torch.tensor([[1]]), masks=masks, boxes=[torch.tensor([[0, 2, 2, 5, 5]])])
        >>> figures = group.compute()
        >>> figures["miou.miou"], figures["boxacc.value"], figures["pxap"]
        (1.0, 1.0, 1.0)
    """

    def __init__(self, metrics: Mapping[str, Metric]) -> None:
        for name, metric in metrics.items():
            if not isinstance(metric, Metric):
                raise TypeError(f"`metrics[{name!r}]` must be a hiercam Metric, got {type_name(metric)}")
        super().__init__()
        self.metrics = nn.ModuleDict(dict(metrics))

    def _items(self) -> list[tuple[str, Metric]]:
        return [(name, metric) for name, metric in self.metrics.items() if isinstance(metric, Metric)]

    def __getitem__(self, name: str) -> Metric:
        """The metric called ``name``."""
        return cast(Metric, self.metrics[name])  # checked in __init__

    def update(self, maps: Tensor, labels: Tensor, **truth: Any) -> None:
        """Add a batch to every metric.

        Args:
            maps: class activation maps ``(B, K, H, W)``.
            labels: multi-hot labels ``(B, K)``.
            **truth: what the metrics read by keyword: ``masks``, ``boxes``, ``images``, and optional ones
                such as ``classes`` (given only to the metrics that take them).

        Raises:
            ValueError: a metric needs a keyword that was not given (checked for all before any update).
        """
        needs = {name: _keywords(metric) for name, metric in self._items()}
        for name, (wanted, _) in needs.items():
            missing = sorted(wanted - truth.keys())
            if missing:
                raise ValueError(f"metric {name!r} needs {', '.join(f'`{key}=`' for key in missing)}")
        for name, metric in self._items():
            required, optional = needs[name]
            metric.update(maps, labels, **{key: truth[key] for key in required | (optional & truth.keys())})

    def compute(self) -> dict[str, float | list[float]]:
        """Every metric's figure over everything seen, as floats (lists for per-threshold figures)."""
        figures: dict[str, float | list[float]] = {}
        for name, metric in self._items():
            _flatten(name, metric.compute(), figures)
        return figures

    def reset(self) -> None:
        """Forget everything seen, in every metric."""
        for _, metric in self._items():
            metric.reset()
