"""Datasets: FashionScenes (bundled, multi-label scenes with exact masks and boxes) and PASCAL VOC 2012."""

from hiercam.datasets.fake_voc import write_fake_voc
from hiercam.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_garments
from hiercam.datasets.fashion_scenes import FashionScenes, SceneBatch, SceneSample, collate_scenes
from hiercam.datasets.voc import VOC_CLASSES, VOCMultiLabel, VOCSample, VOCTransform, collate_voc

__all__ = [
    # the bundled benchmark
    "FashionScenes",
    "SceneSample",
    "SceneBatch",
    "collate_scenes",
    "FASHION_MNIST_CLASSES",
    "load_garments",
    # PASCAL VOC 2012
    "VOCMultiLabel",
    "VOCSample",
    "VOCTransform",
    "collate_voc",
    "VOC_CLASSES",
    "write_fake_voc",
]
