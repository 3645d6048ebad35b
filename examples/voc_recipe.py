"""Reproduce the paper on PASCAL VOC 2012, or check the recipe end to end on a fake VOC tree.

    python examples/voc_recipe.py --quick                          # fake VOC tree, tiny model, CPU, seconds
    python examples/voc_recipe.py --data /path/to/VOCdevkit        # the real run (GPU; see docs/voc.md)
    torchrun --nproc_per_node=4 examples/voc_recipe.py --data /path/to/VOCdevkit   # across 4 GPUs

The real run is ``hiercam run configs/voc_resnet50.toml --data ...``; this script does the same from Python.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hiercam.datasets.fake_voc import write_fake_voc
from hiercam.pipeline import init_distributed, load_config, run_pipeline
from hiercam.pipeline.report import ablation_rows

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a fake VOC tree and a tiny CPU model")
    parser.add_argument("--data", help="the VOCdevkit folder (VOC2012 with the SBD train_aug split)")
    parser.add_argument("--config", default=str(CONFIGS / "voc_resnet50.toml"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        work = Path(tempfile.mkdtemp(prefix="hiercam-voc-"))
        data = write_fake_voc(work / "data", num_images=16)["root"]
        # the paper's recipe, shrunk: random-init small backbone, 64 px crops, one epoch
        config = load_config(
            args.config,
            data__root=str(data),
            data__image_size=64,
            data__num_workers=0,
            model__backbone="small_convnet",
            model__width=4,
            model__pretrained=False,
            train__epochs=1,
            train__batch_size=8,
            train__lr=3e-3,
            train__amp=None,
            train__channels_last=False,
            method__levels=(6, 3),
            device="cpu",
        )
        out = Path(args.out) if args.out else work / "run"
    elif args.data:
        config = load_config(args.config, data__root=args.data)
        out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    else:
        parser.error("pass --data /path/to/VOCdevkit, or --quick")
    distributed = init_distributed()  # under torchrun: one process per GPU
    metrics = run_pipeline(config, out, progress=not args.quick)
    if distributed.is_main:
        print("\n".join(ablation_rows(metrics)))
        print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
