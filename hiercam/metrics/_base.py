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

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hiercam._distributed import sync_cat, sync_sum, world_size
from hiercam._validation import all_finite

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

    # ----------------------------------------------------------------------------------------- loading
    def _options(self) -> dict[str, Any]:
        """The options a state is made with (JSON values), saved beside it and compared on loading.

        A state summed under other options (ROAD's percentages, mIoU's thresholds, the score) would give a
        wrong figure with the right shape: subclasses list every such option here. None by default.
        """
        return {}

    def _check_loaded(self, states: dict[str, Tensor], prefix: str) -> None:
        """Consistency of a state about to be loaded, beyond shape, dtype and range (e.g. hits <= trials).

        Subclasses raise ``ValueError`` naming the key (``prefix + name``); nothing is loaded then.
        """

    def _check_state(self, name: str, key: str, value: object) -> Tensor:
        """One state about to be loaded, checked against its declaration.

        A tensor of the default's shape (``"sum"`` states) and dtype kind; counts (integer states)
        non-negative, sums (floating states) finite.
        """
        if not isinstance(value, Tensor):
            raise ValueError(f"state {key!r} must be a tensor, got {type(value).__name__}")
        default = self._defaults.get(name)
        integral = value.dtype != torch.bool and not value.is_floating_point() and not value.is_complex()
        if default is not None:
            if value.shape != default.shape:
                raise ValueError(
                    f"state {key!r} must have shape {tuple(default.shape)} for this metric's options, got "
                    f"{tuple(value.shape)}"
                )
            if default.is_floating_point() != value.is_floating_point() or not (
                value.is_floating_point() or integral
            ):
                kind = "floating-point" if default.is_floating_point() else "integer"
                raise ValueError(f"state {key!r} must be an {kind} tensor, got dtype {value.dtype}")
        elif value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"state {key!r} must be a real tensor, got dtype {value.dtype}")
        if value.numel() == 0:
            return value
        if value.is_floating_point():
            if not all_finite(value):
                raise ValueError(f"state {key!r} must be finite, got NaN or infinite values")
        elif int(value.min()) < 0:
            raise ValueError(f"state {key!r} holds counts, which must be >= 0, got {int(value.min())}")
        return value

    def _check_options(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Refuse a state saved under other options than this metric's (``prefix + "_options"``)."""
        key = prefix + _OPTIONS
        if key not in state_dict:  # a state saved before options were recorded: nothing to compare
            return
        value = state_dict[key]
        try:
            if not isinstance(value, Tensor) or value.dtype != torch.uint8 or value.ndim != 1:
                raise TypeError
            saved = json.loads(bytes(value.tolist()).decode("utf-8"))
            if not isinstance(saved, dict):
                raise TypeError
        except (TypeError, ValueError):
            raise ValueError(f"state {key!r} must be the options a metric saved, got {value!r}") from None
        for name, current in self._options().items():
            if name in saved and saved[name] != _json(current):
                raise ValueError(
                    f"state {key!r}: the state was made with {name}={saved[name]!r}, this metric has "
                    f"{name}={_json(current)!r}; build the metric with the options of the state"
                )

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, reduce in self._reductions.items():
            if reduce == "cat" and self._persistent:
                pieces: list[Tensor] = getattr(self, name)
                value = torch.cat(pieces) if pieces else torch.empty(0)
                destination[prefix + name] = value if keep_vars else value.detach()
        options = self._options()
        if options and self._persistent:
            text = json.dumps(_json(options), sort_keys=True).encode("utf-8")
            destination[prefix + _OPTIONS] = torch.tensor(list(text), dtype=torch.uint8)

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
        if not self._persistent:
            return super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
        # every state is checked before any is loaded: a refused state leaves the metric as it was
        self._check_options(state_dict, prefix)
        checked = {
            name: self._check_state(name, prefix + name, state_dict[prefix + name])
            for name in self._reductions
            if prefix + name in state_dict
        }
        self._check_loaded(checked, prefix)
        for name, reduce in self._reductions.items():
            if reduce != "cat":
                continue
            if name not in checked:
                missing_keys.append(prefix + name)
                continue
            value = checked[name]
            setattr(self, name, [value.detach().clone()] if value.numel() else [])
        skipped = {prefix + name for name, reduce in self._reductions.items() if reduce == "cat"}
        skipped.add(prefix + _OPTIONS)
        rest = {key: value for key, value in state_dict.items() if key not in skipped}
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


_OPTIONS = "_options"  # the state_dict key of the options, a UTF-8 JSON text as a uint8 tensor


def _json(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists), so saved and current options compare equal."""
    result: Any = json.loads(json.dumps(value))
    return result
