"""Train multi-label classifiers (plain or two-branch) with the paper's recipe: ``fit`` and ``evaluate``.

Batch contract: every batch a loader yields is either a mapping with ``"image"`` and ``"labels"`` keys (other
keys are ignored) or a tuple/list whose first two items are the images and the labels ``(B, K)``. Images go to
the model as they are (tensors moved to the device); labels are passed through ``labels_transform``, moved to
the device and converted to float32.

Model/loss contract: the model returns either a logits tensor ``(B, K)`` or an object with a ``mean_logits``
tensor ``(B, K)`` (such as ``TwoBranchOutput``) or a ``class_logits`` tensor ``(B, K)`` (such as
``LevelHeadsOutput``, level 0's logits); mAP is computed from those logits. The loss is called as
``loss(output, labels)`` and returns a scalar tensor or a ``NamedTuple`` of scalar tensors whose first field
is the total to minimise (every field is logged by name).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Sized
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from hiercam._distributed import barrier, is_main
from hiercam._progress import is_terminal
from hiercam._validation import check_int, is_real, type_name
from hiercam.training._checkpoint import (
    check_fits,
    load_checkpoint,
    loader_generators,
    random_states,
    restore_random_states,
    save_checkpoint,
)
from hiercam.training._loop import LossFn, Step, bce_loss, run_pass
from hiercam.training.history import History

__all__ = ["fit", "evaluate"]

Scheduler = LRScheduler | ReduceLROnPlateau


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    loss: LossFn | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    labels_transform: Callable[[Tensor], Tensor] | None = None,
    amp_dtype: torch.dtype = torch.float16,
) -> dict[str, float]:
    """Loss terms and mAP of a model over a loader, in eval mode without gradients.

    Args:
        model: a classifier following the model contract of this module.
        loader: batches following the batch contract of this module.
        loss: as in [`fit`][hiercam.fit] (default: BCE with logits).
        device: where to run; ``None`` is the device of the model's parameters. The model is moved there.
        amp: autocast (float16 or bfloat16 on CUDA, bfloat16 elsewhere); ``None`` enables it on CUDA.
        labels_transform: applied to every batch's labels first.
        amp_dtype: ``torch.float16`` or ``torch.bfloat16``.

    Returns:
        ``{"loss": ..., <NamedTuple fields>..., "map": ...}``, means over samples; mAP over the whole loader.

    Raises:
        TypeError, ValueError: as [`fit`][hiercam.fit].
    """
    run_device, use_amp = _device_and_amp(model, device, amp, amp_dtype)
    if device is not None:
        model.to(run_device)
    step = Step(
        model, loss if loss is not None else bce_loss, run_device, use_amp, labels_transform, amp_dtype
    )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            means, mean_ap = run_pass(step, loader, bar=None, where="evaluate")
    finally:
        model.train(was_training)
    return {**means, "map": float(mean_ap)}


def _device_and_amp(
    model: nn.Module, device: str | torch.device | None, amp: bool | None, amp_dtype: torch.dtype
) -> tuple[torch.device, bool]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type_name(model)}")
    if device is None:
        first = next(model.parameters(), None)
        run_device = first.device if first is not None else torch.device("cpu")
    else:
        run_device = torch.device(device)
    if amp_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"`amp_dtype` must be torch.float16 or torch.bfloat16, got {amp_dtype}")
    if amp is None:
        amp = run_device.type == "cuda"
    elif not isinstance(amp, bool):
        raise TypeError(f"`amp` must be a bool or None, got {type_name(amp)}")
    elif amp and run_device.type != "cuda" and amp_dtype != torch.bfloat16:
        raise ValueError(
            f"`amp` on device {run_device} needs `amp_dtype=torch.bfloat16` (float16 autocast with gradient "
            f"scaling is CUDA only), got `amp_dtype={amp_dtype}`"
        )
    return run_device, amp


def fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    epochs: int,
    loss: LossFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-4,
    val_loader: Iterable[Any] | None = None,
    scheduler: Literal["plateau"] | Scheduler | None = "plateau",
    device: str | torch.device | None = None,
    amp: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool = True,
    labels_transform: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    amp_dtype: torch.dtype = torch.float16,
) -> History:
    """Train ``model`` for multi-label classification; defaults follow the paper's recipe.

    Defaults: Adam with ``lr=1e-4``; ``ReduceLROnPlateau`` (factor 0.5, patience 5) on the validation loss
    (on the training loss when there is no ``val_loader``), stepped once per epoch; BCE with logits. One tqdm
    bar per epoch shows the running loss, then the validation mAP (one plain line per epoch when stderr is not
    a terminal). The model is trained in place; its ``training`` flag is restored at the end.

    Reproducibility: training runs under ``torch.random.fork_rng`` seeded with ``seed``, so the caller's
    torch random state is left untouched and two runs with the same seed, model initialisation and data give
    the same weights on the CPU (on CUDA, call ``torch.use_deterministic_algorithms(True)`` for bitwise
    equality). The loader's shuffle order comes from that seeded state, or from the loader's own
    ``generator`` if it has one.

    Distributed training: wrap the model in ``DistributedDataParallel`` and give each process its share of the
    data (a ``DistributedSampler``, whose ``set_epoch`` is called every epoch, or any per-process loader);
    losses and mAP are then computed over all processes, and only rank 0 writes the checkpoint and shows
    progress bars. Resuming restores rank 0's random states in every process.

    Checkpoint and resume: with ``checkpoint``, a file is written atomically after every epoch with the model,
    optimizer, scheduler and AMP scaler states, the history, and every random state the next epoch depends on
    (torch CPU and CUDA, NumPy's and Python's global generators, the loader's and its sampler's generators).
    If the file exists when ``fit`` starts, training resumes after its last completed epoch and ends with
    the same weights as an uninterrupted run (NumPy's and Python's global states are then set to the saved
    ones). The optimizer's hyper-parameters come from the checkpoint. It loads with
    ``torch.load(weights_only=True)`` and is validated (every key and type, and that it fits the model and
    optimizer) before anything is loaded into them.

    Checks every step: the labels hold only 0/1 (checked before they move to the device: free for labels the
    loader yields on the CPU), and the loss and the logits are finite (one reduction over the ``B x K`` logits
    and one device synchronisation per step). A failure raises before the optimizer step, naming the epoch,
    the batch and where the values appeared, so no step trains on NaN and validation never scores NaN logits.
    The loss (a hiercam loss: ``TwoBranchLoss``, ``LevelHeadsLoss``) and the validation mAP do not check
    those labels and logits again. These are value checks: with
    [`hiercam.set_checks(False)`][hiercam.set_checks] none of them runs (no synchronisation per step, and no
    stop on a NaN loss either).

    Args:
        model: a classifier returning logits ``(B, K)`` or an object with ``mean_logits (B, K)`` or
            ``class_logits (B, K)``.
        train_loader: re-iterable batches following the batch contract (module docstring), e.g. a DataLoader.
        epochs: total number of epochs, counting those already in ``checkpoint``.
        loss: ``loss(output, labels)`` returning a scalar tensor or a NamedTuple of scalar tensors whose
            first field is the total. Default: BCE with logits, for models returning a logits tensor; a
            two-branch model needs its own loss (``hiercam.TwoBranchLoss``), a level-heads model too
            (``hiercam.losses.LevelHeadsLoss``).
        optimizer: default ``torch.optim.Adam(model.parameters(), lr=lr)``.
        lr: learning rate of the default optimizer (ignored when ``optimizer`` is given).
        val_loader: batches for the validation loss and mAP after every epoch.
        scheduler: ``"plateau"`` (the paper's), ``None`` (constant rate), or a scheduler built on
            ``optimizer``, stepped once per epoch (``ReduceLROnPlateau`` with the monitored loss).
        device: where to train; ``None`` is the device of the model's parameters. The model is moved there.
        amp: mixed-precision autocast: on CUDA with ``amp_dtype``, on the CPU (or another device) with
            ``amp_dtype=torch.bfloat16`` only; ``None`` enables it on CUDA.
        checkpoint: file to write after every epoch and to resume from when it exists.
        progress: show a tqdm progress bar per epoch on stderr; when stderr is not a terminal (a log file,
            a pipe), one plain line per epoch instead (loss, validation loss and mAP, seconds).
        labels_transform: applied to the labels of every batch, e.g.
            ``functools.partial(hierarchy.remap_labels, level=1)`` to train a level model.
        seed: seed of the torch random state during training.
        amp_dtype: the autocast type with ``amp``: ``torch.float16`` (CUDA, with gradient scaling, the
            default) or ``torch.bfloat16`` (CUDA or CPU, no scaling needed).

    Returns:
        The [`History`][hiercam.History] of all epochs, resumed ones included.

    Raises:
        TypeError: an argument of the wrong type, a batch or model output or loss result not following the
            contracts.
        ValueError: ``epochs < 1``, ``lr <= 0``, ``amp`` with float16 off CUDA, logits and labels of different
            shapes, labels other than 0/1, a non-finite loss or logits (training or validation; the message
            names the epoch, the batch and whether the images, the model or the loss produced it), or a
            checkpoint that is truncated, corrupted, from another format, missing a key, not fitting the
            model or optimizer, or with more epochs than ``epochs`` (the message names the file and key).

    Examples:
        >>> import torch
        >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8, 3)).float()) for _ in range(4)]
        >>> history = fit(torch.nn.Linear(4, 3), data, epochs=2, val_loader=data[:1], progress=False)
        >>> history.keys()
        ['epoch', 'lr', 'train_loss', 'val_loss', 'val_map', 'seconds']
    """
    check_int(epochs, "epochs", minimum=1)
    check_int(seed, "seed", minimum=0)
    run_device, use_amp = _device_and_amp(model, device, amp, amp_dtype)
    if not is_real(lr):
        raise TypeError(f"`lr` must be a float, got {type_name(lr)}")
    lr = float(lr)
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0, got {lr}")
    if loss is not None and not callable(loss):
        raise TypeError(f"`loss` must be callable or None, got {type_name(loss)}")
    if labels_transform is not None and not callable(labels_transform):
        raise TypeError(f"`labels_transform` must be callable or None, got {type_name(labels_transform)}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"`optimizer` must be a torch.optim.Optimizer or None, got {type_name(optimizer)}")
    if isinstance(scheduler, str) and scheduler != "plateau":
        raise ValueError(f"`scheduler` must be 'plateau', None or a scheduler object, got {scheduler!r}")
    if scheduler is not None and not isinstance(scheduler, (str, LRScheduler, ReduceLROnPlateau)):
        raise TypeError(
            f"`scheduler` must be 'plateau', None or a scheduler object, got {type_name(scheduler)}"
        )

    if device is not None:
        model.to(run_device)
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if scheduler == "plateau":
        scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=5)
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None  # CUDA only
    step = Step(
        model, loss if loss is not None else bce_loss, run_device, use_amp, labels_transform, amp_dtype
    )
    generators = loader_generators(train_loader)
    cuda = [run_device] if run_device.type == "cuda" else []

    was_training = model.training
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(run_device):
                    torch.cuda.manual_seed(seed)
            history = History()
            if checkpoint is not None and Path(checkpoint).is_file():
                history = _resume(
                    checkpoint, epochs, model, optimizer, scheduler, scaler, run_device, generators
                )
            for epoch in range(len(history) + 1, epochs + 1):
                record = _epoch(step, train_loader, val_loader, optimizer, scaler, epoch, epochs, progress)
                monitored = record.get("val_loss", record["train_loss"])
                if isinstance(scheduler, ReduceLROnPlateau):
                    scheduler.step(monitored)
                elif scheduler is not None:
                    scheduler.step()
                history.append(record)
                if checkpoint is not None and is_main():
                    save_checkpoint(
                        checkpoint,
                        {
                            "epoch": epoch,
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else None,
                            "scaler": scaler.state_dict() if scaler is not None else None,
                            "history": history.records,
                            "rng": random_states(run_device, generators),
                        },
                    )
                if checkpoint is not None:
                    barrier()  # every process resumes from the same file
    finally:
        model.train(was_training)
    return history


def _epoch(
    step: Step,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    epochs: int,
    progress: bool,
) -> dict[str, float]:
    """Train one epoch, validate, and return its record."""
    from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

    start = time.perf_counter()
    record: dict[str, float] = {"epoch": float(epoch), "lr": float(optimizer.param_groups[0]["lr"])}
    total = len(train_loader) if isinstance(train_loader, Sized) else None
    set_epoch = getattr(getattr(train_loader, "sampler", None), "set_epoch", None)
    if callable(set_epoch):  # DistributedSampler: a new shuffle every epoch
        set_epoch(epoch)
    show = progress and is_main()
    bar_shown = show and is_terminal()  # in a log file a bar writes thousands of characters: one line instead
    with tqdm(total=total, desc=f"epoch {epoch}/{epochs}", disable=not bar_shown, dynamic_ncols=True) as bar:
        step.model.train()
        train, _ = run_pass(step, train_loader, bar, optimizer, scaler, f"epoch {epoch}/{epochs} (training)")
        record.update({f"train_{name}": value for name, value in train.items()})
        bar.set_postfix(loss=f"{train['loss']:.4f}")
        if val_loader is not None:
            step.model.eval()
            with torch.no_grad():
                val, mean_ap = run_pass(step, val_loader, None, where=f"epoch {epoch}/{epochs} (validation)")
            record.update({f"val_{name}": value for name, value in val.items()})
            record["val_map"] = float(mean_ap)
            bar.set_postfix(
                loss=f"{train['loss']:.4f}", val_loss=f"{val['loss']:.4f}", val_map=f"{mean_ap:.4f}"
            )
    record["seconds"] = time.perf_counter() - start
    if show and not bar_shown:
        print(_epoch_line(record, epochs), file=sys.stderr, flush=True)
    return record


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    """One line for an epoch's record, where a terminal would show a progress bar."""
    parts = [f"loss {record['train_loss']:.4f}"]
    if "val_loss" in record:
        parts += [f"val_loss {record['val_loss']:.4f}", f"val_map {record['val_map']:.4f}"]
    return f"epoch {int(record['epoch'])}/{epochs}: {', '.join(parts)} ({record['seconds']:.1f} s)"


def _resume(
    path: str | os.PathLike[str],
    epochs: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler | None,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    generators: list[torch.Generator],
) -> History:
    """Load a checkpoint into the training objects; returns the history of its completed epochs.

    The file is validated (keys, types, and that it fits the model and optimizer) before anything is loaded.
    """
    data = load_checkpoint(path)
    if data["epoch"] > epochs:
        raise ValueError(
            f"`checkpoint` {os.fspath(path)!r} holds {data['epoch']} completed epochs, "
            f"more than `epochs`={epochs}"
        )
    check_fits(data, path, model, optimizer)
    model.load_state_dict(data["model"])
    optimizer.load_state_dict(data["optimizer"])
    if scheduler is not None and data["scheduler"] is not None:
        scheduler.load_state_dict(data["scheduler"])
    if scaler is not None and data["scaler"] is not None:
        scaler.load_state_dict(data["scaler"])
    restore_random_states(data["rng"], device, generators)
    return History(data["history"])
