"""The one base of the streaming metrics: states, ``forward``, ``state_dict``, the sync across processes.

A metric is an ``nn.Module`` (so ``.to(device)``, ``state_dict()`` / ``load_state_dict()``, ``nn.ModuleDict``
and PyTorch Lightning's device moves work as for any module) that declares its states with
[`add_state`][hiercam.metrics.Metric.add_state]:

* ``"sum"`` states are fixed-shape tensors (confusion matrices, counts), registered as buffers and
  summed across processes with ``all_reduce``;
* ``"cat"`` states are lists of ``(N, ...)`` tensors (scores that a ranking needs in full), concatenated
  across processes; a process with no data contributes nothing.

The interface is torchmetrics': ``update`` adds a batch, ``compute`` gives the figure over everything seen
(synced across processes when a process group of two or more is initialised), ``reset`` forgets, and calling
the metric (``forward``) returns the figure of the batch alone *and* accumulates it. hiercam does not subclass
``torchmetrics.Metric`` so that the library needs no runtime dependency beyond torch for it, and so that a
process with no data takes part in the sync (an empty rank never raises while its peers wait).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hiercam._distributed import sync_cat, sync_sum, world_size

__all__ = ["Metric", "Reduction"]

Reduction = Literal["sum", "cat"]
_States = dict[str, Tensor | list[Tensor]]


class Metric(nn.Module):
    """Base of the streaming metrics: subclasses declare states and implement ``update`` and ``_compute``.

    Args:
        sync_on_compute: sum / concatenate the states of all processes in ``compute`` when a
            ``torch.distributed`` process group of two or more processes is initialised. Every process must
            then call ``compute`` (it is a collective), including a process that saw no data.

    Examples:
        A metric of your own: the fraction of images with at least one present class.

        >>> import torch
        >>> class AnyPresent(Metric):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.add_state("counts", torch.zeros(2, dtype=torch.long), "sum")
        ...     def update(self, labels: torch.Tensor) -> None:
        ...         hits = int(labels.bool().any(dim=1).sum())
        ...         self.counts = self.counts + torch.tensor([hits, len(labels)])
        ...     def _compute(self) -> torch.Tensor:
        ...         return self.counts[0] / self.counts[1]
        >>> metric = AnyPresent()
        >>> metric(torch.tensor([[1, 0], [0, 0]]))  # this batch alone, and accumulated
        tensor(0.5000)
        >>> metric.update(torch.tensor([[0, 1], [1, 1]]))
        >>> metric.compute()
        tensor(0.7500)
        >>> metric.state_dict()["counts"]
        tensor([3, 4])
    """

    def __init__(self, *, sync_on_compute: bool = True) -> None:
        super().__init__()
        self.sync_on_compute = bool(sync_on_compute)
        self._reductions: dict[str, Reduction] = {}
        self._defaults: dict[str, Tensor] = {}
        self._persistent = True

    # ----------------------------------------------------------------------------------------- states
    def add_state(self, name: str, default: Tensor | None, reduce: Reduction) -> None:
        """Declare a state: a ``"sum"`` tensor starting at ``default``, or a ``"cat"`` list starting empty.

        Args:
            name: attribute name of the state.
            default: the initial tensor of a ``"sum"`` state; ``None`` for a ``"cat"`` state.
            reduce: ``"sum"`` (a fixed-shape tensor summed across processes) or ``"cat"`` (a list of
                ``(N, ...)`` tensors concatenated across processes).

        Raises:
            ValueError: an unknown ``reduce``, or a ``"sum"`` state without a default.
        """
        if reduce == "sum":
            if default is None:
                raise ValueError(f"a 'sum' state needs a default tensor, got None for {name!r}")
            self._defaults[name] = default.detach().clone()
            self.register_buffer(name, default.detach().clone(), persistent=self._persistent)
        elif reduce == "cat":
            setattr(self, name, [])
        else:
            raise ValueError(f"`reduce` must be 'sum' or 'cat', got {reduce!r}")
        self._reductions[name] = reduce

    def persistent(self, mode: bool = True) -> Metric:
        """Whether the states go into ``state_dict()`` (they do by default); returns ``self``.

        Inside a model whose checkpoints must load without the metric's state (torchmetrics' default), call
        ``metric.persistent(False)``.
        """
        self._persistent = bool(mode)
        for name, reduce in self._reductions.items():
            if reduce == "sum":
                if self._persistent:
                    self._non_persistent_buffers_set.discard(name)
                else:
                    self._non_persistent_buffers_set.add(name)
        return self

    def _states(self) -> _States:
        return {
            name: list(getattr(self, name)) if reduce == "cat" else getattr(self, name)
            for name, reduce in self._reductions.items()
        }

    def _set_states(self, states: _States) -> None:
        for name, value in states.items():
            setattr(self, name, value)

    def _reset_states(self) -> None:
        for name, reduce in self._reductions.items():
            if reduce == "cat":
                setattr(self, name, [])
            else:
                current: Tensor = getattr(self, name)
                setattr(self, name, self._defaults[name].to(current.device, copy=True))

    def _merge_states(self, batch: _States) -> None:
        """Add the states of a batch (from ``_states``) to the current ones."""
        for name, value in batch.items():
            if isinstance(value, list):
                getattr(self, name).extend(value)
            else:
                current: Tensor = getattr(self, name)
                setattr(self, name, current + value.to(current.device))

    @contextmanager
    def _synced(self) -> Iterator[None]:
        """Within the block, the states are those of all processes; the local ones are restored after."""
        if not self.sync_on_compute or world_size() < 2:
            yield
            return
        local = self._states()
        try:
            for name, reduce in self._reductions.items():
                value = getattr(self, name)
                if reduce == "sum":
                    setattr(self, name, sync_sum(value))
                else:
                    merged = sync_cat(torch.cat(value) if value else None)
                    setattr(self, name, [] if merged is None else [merged])
            yield
        finally:
            self._set_states(local)

    # ----------------------------------------------------------------------------------------- interface
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add a batch to the states (implemented by each metric)."""
        raise NotImplementedError

    def _compute(self) -> Any:
        """The figure from the current states, without any sync (implemented by each metric)."""
        raise NotImplementedError

    def compute(self) -> Any:
        """The figure over everything seen since ``reset`` (synced across processes); NaN with no data."""
        with self._synced():
            return self._compute()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Return the figure of this batch alone and add the batch to the states (as torchmetrics does).

        The batch figure is local to the process (no sync). If the batch is refused, the states are unchanged.
        """
        accumulated = self._states()
        self._reset_states()
        try:
            self.update(*args, **kwargs)
            value = self._compute()
            batch = self._states()
        finally:
            self._set_states(accumulated)
        self._merge_states(batch)
        return value

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._reset_states()

    # ----------------------------------------------------------------------------------------- nn.Module
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Metric:
        """``.to()``, ``.cuda()``, ``.double()``: the buffers (``"sum"`` states) and the ``"cat"`` lists."""
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        for name, reduce in self._reductions.items():
            if reduce == "cat":
                setattr(self, name, [fn(piece) for piece in getattr(self, name)])
            else:
                self._defaults[name] = fn(self._defaults[name])
        return self

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, reduce in self._reductions.items():
            if reduce == "cat" and self._persistent:
                pieces: list[Tensor] = getattr(self, name)
                value = torch.cat(pieces) if pieces else torch.empty(0)
                destination[prefix + name] = value if keep_vars else value.detach()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name, reduce in self._reductions.items():
            if reduce != "cat" or not self._persistent:
                continue
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            if not isinstance(value, Tensor):
                error_msgs.append(f"{key!r} must be a tensor, got {type(value).__name__}")
                continue
            setattr(self, name, [value.detach().clone()] if value.numel() else [])
        cat_keys = {prefix + name for name, reduce in self._reductions.items() if reduce == "cat"}
        rest = {key: value for key, value in state_dict.items() if key not in cat_keys}
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
