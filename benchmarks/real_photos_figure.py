"""Figure: MSRC-21 test photos with the plain Grad-CAM and the recommended method's maps side by side.

Runs the pipeline of two presets with the bench's model and map cache (nothing is trained when
``hiercam bench`` ran before with the same config and ``--out``; the scoring runs again, without the
MaxBoxAccV2/PxAP sweep and the deletion/insertion curves, which the figure does not need), then draws the
first test scenes of the report's CAM figure: the photo, the ground-truth mask of its largest labelled class,
plain Grad-CAM (preset ``paper``'s baseline row: the same base classifier) and the recommended method's map of
that class.

    python benchmarks/real_photos_figure.py --config configs/msrc21_mobilenet_v2.toml \
        --cache runs/bench-msrc21/cache --out docs/images/msrc21_gradcam_vs_recommended.png

The photos are MSRC-v2 images (Microsoft Research Cambridge, non-commercial use only): the figure is a
derivative work under those terms, resized and overlaid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hiercam.pipeline import apply_preset, load_config, run_pipeline
from hiercam.pipeline.data import class_names
from hiercam.pipeline.figures import largest_labelled_class, panel_grid
from hiercam.pipeline.keys import Variant
from hiercam.viz import overlay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/msrc21_mobilenet_v2.toml")
    parser.add_argument("--cache", default="runs/bench-msrc21/cache", help="the bench's OUT/cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/images/msrc21_gradcam_vs_recommended.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config).replace(
        seed=args.seed, evaluation__wsol=False, evaluation__faithfulness_images=0
    )
    scenes = {}
    for preset in ("paper", "recommended"):
        result = run_pipeline(
            apply_preset(config, preset), Path("runs/figure") / preset, progress=False, cache=args.cache
        )
        assert result.figure_scenes is not None
        scenes[preset] = result.figure_scenes
    plain, recommended = scenes["paper"], scenes["recommended"]
    method = Variant("grouping") if Variant("grouping") in recommended.maps else Variant("full")
    names = list(class_names(config))

    count = min(args.rows, len(plain.images))
    panels, row_labels = [], []
    for row in range(count):
        image, mask = plain.images[row], plain.masks[row]
        cls = largest_labelled_class(plain.labels[row], mask)
        panels.append(
            [
                image.permute(1, 2, 0).numpy(),
                (mask == cls + 1).float().numpy(),
                overlay(image, plain.maps[Variant("baseline")][row, cls]),
                overlay(image, recommended.maps[method][row, cls]),
            ]
        )
        row_labels.append(names[cls])
    columns = ["photo", "ground truth", "Grad-CAM", "recommended"]
    figure = panel_grid(panels, columns, row_labels, panel_size=(1.9, 1.6))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
