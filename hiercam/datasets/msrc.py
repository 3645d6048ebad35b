"""MSRC-21: real photos with pixel labels for measuring CAM quality (image, labels, label map, boxes).

Reads the layout of the MSRC-21 folder the user provides (``images/<id>.jpg``, ``labels/<id>.png``,
``image_labels.json``, ``classes.json``, ``splits/<split>.txt``); hiercam ships none of it: the photos are
under a non-commercial licence (Microsoft Research Digital Image License Agreement).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hiercam.datasets._folder_files import FolderClasses
from hiercam.datasets._msrc_layout import (
    MSRC21_CLASSES,
    MSRC21_STUFF_CLASSES,
    VOID,
    MaskTransform,
    read_classes,
)
from hiercam.datasets.fake_msrc import write_fake_msrc21
from hiercam.datasets.folder import FolderLayout, SegmentationFolder, SegmentationSample

__all__ = [
    "MSRC21",
    "MSRC21Sample",
    "MSRC21_CLASSES",
    "MSRC21_STUFF_CLASSES",
    "write_fake_msrc21",
]

#: One MSRC-21 sample: a [`SegmentationSample`][hiercam.datasets.SegmentationSample] (``K`` scored classes,
#: ``H x W`` after resizing, ``M`` boxes; batch with [`collate_voc`][hiercam.datasets.collate_voc]).
MSRC21Sample = SegmentationSample


class MSRC21(SegmentationFolder):
    """MSRC-21 (591 real photos, 21 classes, pixel labels with void) for multi-label training and CAM scores.

    The folder is the one described in its ``README.md``: ``images/<id>.jpg``, ``labels/<id>.png``
    (single-channel, ids ``0..20``, ``255`` void), ``image_labels.json`` (``{id: [class ids]}``),
    ``classes.json`` (``{"classes": [21 names], ...}``) and ``splits/{train,val,test,all}.txt`` (the standard
    split of Shotton et al., 276 / 59 / 256 images). Nothing is downloaded and nothing of it ships with
    hiercam (non-commercial licence). It is a preset of
    [`SegmentationFolder`][hiercam.datasets.SegmentationFolder]: label maps in ``labels/``, ``.jpg`` photos,
    exactly 21 classes, void 255 and ``image_labels.json`` required.

    **Checks.** The constructor reads only the small files and tests that every listed image and label map
    exists, so a missing or partial tree fails at once with a message naming the path. Pixel values are
    read, and checked (ids ``0..20`` or ``255``, the size of the photo, the classes of ``image_labels.json``),
    when a sample is loaded.

    **Resizing.** With ``image_size`` the photo is resized bilinearly (antialiased) and the label map by
    nearest neighbour (``"nearest-exact"``: each output pixel takes the input pixel under its centre) to a
    fixed size, **stretched**, without padding or cropping: MSRC photos are 320 x 213 or 320 x 240 (some
    upright), so the aspect ratio changes by at most 1.5; every labelled pixel stays in the frame and no
    padding adds pixels that belong to no class. ``image_size=None`` keeps each photo's own size (batches then
    need ``batch_size=1``).

    **Background.** MSRC-21 labels every pixel with a class or void; it has no background class. By default
    (``background_classes=()``) all 21 classes are scored: label ``k + 1`` is class ``k`` and label ``0``
    never occurs in the masks, so pixels the IRN convention gives to the background plane count as misses
    of their true class; average the IoUs of
    [`scored_labels`][hiercam.datasets.SegmentationFolder.scored_labels] only (label 0's IoU is 0 by
    construction). With ``background_classes`` (e.g.
    [`MSRC21_STUFF_CLASSES`][hiercam.datasets.MSRC21_STUFF_CLASSES]) those classes become the background,
    label ``0``: they leave ``labels`` and ``classes`` and the other classes are renumbered in their
    order. ``docs/datasets.md`` says why the default scores all classes.

    **Boxes.** One box per 8-connected component of each class in the final label map (after resizing and
    ``transform``), ``(class, x1, y1, x2, y2)`` with exclusive far edges (the box convention of
    [`hiercam.maps`][hiercam.maps], found by [`mask_boxes`][hiercam.maps.mask_boxes]); components with fewer
    than ``min_box_area`` pixels get no box; rows are sorted by
    class, then by the first pixel of the component in row-major order. Void pixels belong to no component,
    so MSRC's void bands can split an object into several boxes.

    **Labels.** ``labels`` come from ``image_labels.json`` (the classes of the full-size label map, which
    are checked to agree), even if a small region vanishes in the resizing. A ``transform`` may remove a
    class (a crop): a class that had pixels before the transform and has none after it is no longer a target.

    Args:
        root: the MSRC-21 folder (e.g. ``../shared/data/msrc21``).
        split: ``"train"`` (276), ``"val"`` (59), ``"test"`` (256) or ``"all"`` (591).
        image_size: output side ``S`` (square ``S x S``), an ``(H, W)`` pair, or ``None`` for the original
            size.
        transform: optional ``transform(image, mask) -> (image, mask)`` applied after resizing, e.g. a
            random flip; boxes and labels are computed from its output. It receives a ``(3, H, W)`` float32
            image and a ``(H, W)`` int64 mask and must return tensors of those ranks with equal sizes.
        min_box_area: smallest component, in pixels of the final label map, that gets a box (>= 0; 0 keeps
            every component). The default 100 drops specks: at 224 x 224 it is 0.2 % of the image, and 12 of
            the 1,720 class components of MSRC-21 are smaller.
        background_classes: names (or ids) of classes to treat as background, label 0.

    Attributes:
        root: the folder.
        split: the split name.
        ids: the image ids of the split, in the order of its file.
        all_classes: the 21 names of ``classes.json``.
        classes: the ``K`` scored class names: ``all_classes`` without ``background_classes``.
        background_classes: the names mapped to background.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: unknown ``split`` or class name, a bad ``image_size`` or ``min_box_area``, every class in
            ``background_classes``, or a file of the tree with the wrong content (the message names it).
        FileNotFoundError: ``root``, ``classes.json``, ``image_labels.json``, the split file, or an image or
            label map of a listed id is missing (the message names the path).

    Examples:
        >>> import tempfile
        >>> root = write_fake_msrc21(tempfile.mkdtemp(), num_images=8)["root"]
        >>> dataset = MSRC21(root, "train", image_size=64)
        >>> sample = dataset[0]
        >>> sample["image"].shape, sample["labels"].shape, sample["mask"].shape
        (torch.Size([3, 64, 64]), torch.Size([21]), torch.Size([64, 64]))
        >>> stuff = MSRC21(root, "train", image_size=64, background_classes=MSRC21_STUFF_CLASSES)
        >>> len(stuff.classes), stuff.classes[:3], stuff.scored_labels[:3]
        (15, ('cow', 'sheep', 'aeroplane'), (0, 1, 2))
    """

    layout = FolderLayout(
        name="MSRC-21 folder",
        described="an MSRC-21 folder",
        masks="labels",
        image_suffixes=(".jpg",),
        labels_required=True,
    )

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        image_size: int | tuple[int, int] | None = 224,
        transform: MaskTransform | None = None,
        min_box_area: int = 100,
        background_classes: Sequence[str | int] = (),
    ) -> None:
        super().__init__(
            root,
            split,
            image_size=image_size,
            transform=transform,
            min_box_area=min_box_area,
            background_classes=background_classes,
        )

    def _read_classes(self, path: Path) -> FolderClasses:
        """MSRC-21's ``classes.json``: exactly its 21 names; void is 255."""
        return FolderClasses(read_classes(path), VOID)

    def __repr__(self) -> str:
        background = f", background_classes={self.background_classes}" if self.background_classes else ""
        return (
            f"MSRC21({str(self.root)!r}, {self.split!r}, {len(self)} images, image_size={self.image_size}, "
            f"min_box_area={self.min_box_area}{background})"
        )
