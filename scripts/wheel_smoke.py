"""Smoke test of an installed hiercam wheel, run from outside the source tree by ``wheel_smoke.sh``.

Checks what a broken wheel would get wrong: the package imports from the install location (not the
checkout), ``py.typed`` and package data are present, every public name resolves, and a small piece of
real work runs.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path


def main(site: str) -> None:
    import torch

    import hiercam

    package_dir = Path(hiercam.__file__).resolve().parent
    if Path(site).resolve() not in package_dir.parents:
        raise SystemExit(f"hiercam was imported from {package_dir}, not from the wheel in {site}")
    if not (package_dir / "py.typed").is_file():
        raise SystemExit("py.typed is missing from the wheel")
    if metadata.version("hiercam") != hiercam.__version__:
        raise SystemExit(f"version mismatch: {metadata.version('hiercam')} != {hiercam.__version__}")
    missing = [name for name in hiercam.__all__ if not hasattr(hiercam, name)]
    if missing:
        raise SystemExit(f"public names missing from the wheel: {missing}")

    weights = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    hierarchy = hiercam.group_classes(weights, levels=(3, 2))
    if hierarchy.level_sizes != (6, 3, 2):
        raise SystemExit(f"unexpected hierarchy: {hierarchy.level_sizes}")

    # The bundled Fashion-MNIST subset must be in the wheel, and FashionScenes must read it from there.
    from hiercam.datasets.fashion_mnist import SUBSET_PATH

    if package_dir not in SUBSET_PATH.parents or not SUBSET_PATH.is_file():
        raise SystemExit(f"the bundled Fashion-MNIST subset is missing from the wheel: {SUBSET_PATH}")
    if not (SUBSET_PATH.parent / "LICENSE-fashion-mnist.txt").is_file():
        raise SystemExit("the Fashion-MNIST licence is missing next to the bundled data")
    sample = hiercam.FashionScenes("test", num_scenes=2, image_size=64)[1]
    if sample["image"].shape != (3, 64, 64) or len(sample["boxes"]) != int(sample["labels"].sum()):
        raise SystemExit(f"unexpected FashionScenes sample: {sample['image'].shape}, {sample['boxes']}")
    size = SUBSET_PATH.stat().st_size / 1e6
    print(f"hiercam {hiercam.__version__} from {package_dir}: {len(hiercam.__all__)} public names OK")
    print(
        f"bundled Fashion-MNIST subset OK ({size:.2f} MB), "
        f"FashionScenes sample with {len(sample['boxes'])} boxes"
    )


if __name__ == "__main__":
    main(sys.argv[1])
