"""A counter of the tensor operations that make the host wait for an accelerator (host synchronisations).

On a GPU, the host queues kernels and runs ahead of the device until something needs a value back: a tensor
read into a Python object, an output whose shape depends on the data, or a blocking copy between host and
device. Each of those waits for every kernel queued before it. [`HostReads`][hiercam._host_reads.HostReads]
counts them on any device, the CPU included, from the Python-level torch calls of a block (a
``TorchFunctionMode``), so that a test can say "this call synchronises 0 times per batch" without a GPU.

What it counts, by kind:

* ``"read"``: values turned into Python objects: ``bool``, ``int``, ``float``, ``operator.index``,
  ``item``, ``tolist``, ``numpy``; and copies to the host: ``cpu``, ``to("cpu")`` (the string);
* ``"shape"``: outputs whose shape depends on the values: ``nonzero``, ``argwhere``, ``unique``,
  ``masked_select``, ``torch.where`` with one argument, ``repeat_interleave`` without ``output_size``, and
  indexing or index assignment with a boolean tensor;
* ``"copy"``: indexing a tensor with a Python list of ints (the index is built on the host and copied to the
  tensor's device).

What it cannot see: operations that torch runs in C++ without a Python call (inside ``autograd.grad``, a
vmapped backward, a compiled graph), and host-to-device copies that are no-ops on the CPU. For those,
``torch.cuda.set_sync_debug_mode("error")`` on a GPU (``benchmarks/gpu_sync_check.py``) is the final word.

Used by the tests of the value-check switch and the GPU-readiness of the CAM engine, and by
``benchmarks/checks_cost.py``.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["HostRead", "HostReads", "host_reads"]

_READS = frozenset({"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu"})
_SHAPES = frozenset(
    {"nonzero", "nonzero_static_", "argwhere", "unique", "unique_consecutive", "masked_select", "_unique2"}
)
_INDEXING = frozenset({"__getitem__", "__setitem__", "index_put_", "index_put"})
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class HostRead:
    """One counted operation: its kind (``"read"``, ``"shape"`` or ``"copy"``), name and place in hiercam."""

    kind: str
    name: str
    where: str

    def __str__(self) -> str:
        return f"{self.name} ({self.kind}) at {self.where}"


class HostReads(TorchFunctionMode):
    """Counts the operations of a block that synchronise the host with an accelerator (module docstring).

    ``count`` is their number; ``events`` says what each was and where in hiercam it was called (the
    innermost hiercam frame, else the caller's), for error messages.

    Examples:
        >>> import torch
        >>> x = torch.arange(4.0)
        >>> with HostReads() as reads:
        ...     total = float(x.sum())  # one read
        ...     y = x[x > 1]  # a boolean mask: a data-dependent shape
        ...     z = torch.where(x > 1, x, 0.0)  # the same values kept without a sync
        >>> reads.count, [event.kind for event in reads.events]
        (2, ['read', 'shape'])
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[HostRead] = []

    @property
    def count(self) -> int:
        """The number of counted operations."""
        return len(self.events)

    def __enter__(self) -> HostReads:
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        kind = _kind(getattr(func, "__name__", ""), args, kwargs)
        if kind is not None:
            self.events.append(HostRead(kind, getattr(func, "__name__", repr(func)), _where()))
        return func(*args, **kwargs)


def host_reads(call: Callable[[], object]) -> int:
    """The number of operations of ``call()`` that synchronise the host with an accelerator.

    Examples:
        >>> import torch
        >>> host_reads(lambda: torch.ones(3).sum().item())
        1
    """
    with HostReads() as reads:
        call()
    return reads.count


def _kind(name: str, args: Any, kwargs: dict[str, Any]) -> str | None:
    if name in _READS:
        return "read"
    if name in _SHAPES:
        return "shape"
    if name == "where" and len(args) + len(kwargs) == 1:
        return "shape"
    if name == "repeat_interleave" and kwargs.get("output_size") is None:
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats", args[0] if args else None)
        return "shape" if isinstance(repeats, Tensor) else None  # its sum is the output's length
    if name == "to" and _to_host(args[1:], kwargs):
        return "read"
    if name in _INDEXING and len(args) > 1:
        return _index_kind(args[1])
    return None


def _to_host(args: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a ``Tensor.to`` call spells out ``"cpu"`` (a copy to the host from an accelerator).

    Only the string: a ``torch.device`` that is the CPU in a test on the CPU is usually another tensor's
    device, which on an accelerator would be that accelerator.
    """
    return any(isinstance(value, str) and value.startswith("cpu") for value in (*args, kwargs.get("device")))


def _index_kind(index: Any) -> str | None:
    parts = index if isinstance(index, tuple) else (index,)
    if any(isinstance(p, Tensor) and p.dtype == torch.bool for p in parts):
        return "shape"  # the number of True values is the output's length
    if any(isinstance(p, list) for p in parts):
        return "copy"
    return None


def _where() -> str:
    """``file:line`` of the innermost frame in hiercam (else the outermost caller's) that made the call."""
    frames = traceback.extract_stack()[:-2]  # without this function and __torch_function__
    own = [f for f in frames if f.filename.startswith(_PACKAGE) and not f.filename.endswith("_host_reads.py")]
    frame = own[-1] if own else frames[-1]
    path = os.path.relpath(frame.filename, os.path.dirname(_PACKAGE)) if own else frame.filename
    return f"{path}:{frame.lineno}"
