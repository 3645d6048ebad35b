"""Datasets: FashionScenes (bundled scenes with exact masks and boxes), PASCAL VOC 2012 and MSRC-21."""

from hiercam.datasets.fake_msrc import write_fake_msrc21
from hiercam.datasets.fake_voc import write_fake_voc
from hiercam.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_garments
from hiercam.datasets.fashion_scenes import FashionScenes, SceneBatch, SceneSample, collate_scenes
from hiercam.datasets.msrc import MSRC21, MSRC21_CLASSES, MSRC21_STUFF_CLASSES, MSRC21Sample
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
    # MSRC-21 (real photos, read from a folder the user provides)
    "MSRC21",
    "MSRC21Sample",
    "MSRC21_CLASSES",
    "MSRC21_STUFF_CLASSES",
    "write_fake_msrc21",
]
