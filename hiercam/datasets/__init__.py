"""Datasets: FashionScenes, multi-label scenes of Fashion-MNIST garments with exact masks and boxes."""

from hiercam.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_garments
from hiercam.datasets.fashion_scenes import FashionScenes, SceneBatch, SceneSample, collate_scenes

__all__ = [
    "FashionScenes",
    "SceneSample",
    "SceneBatch",
    "collate_scenes",
    "FASHION_MNIST_CLASSES",
    "load_garments",
]
