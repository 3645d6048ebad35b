"""Build a class hierarchy from any classifier and turn class targets into group targets.

Run: python examples/group_classes.py
"""

import torch
from torchvision.models import resnet18

import hiercam


def main() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=20)  # stands in for your trained multi-label classifier
    hierarchy = hiercam.group_classes(model, levels=(12, 8, 5), weighted=True)
    print(hierarchy)
    targets = torch.zeros(2, 20)
    targets[0, [1, 7]] = 1
    for level in range(hierarchy.num_levels):
        print(f"level {level}: targets {tuple(hierarchy.remap_targets(targets, level).shape)}")


if __name__ == "__main__":
    main()
