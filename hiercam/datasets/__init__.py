"""Datasets: FashionScenes, PASCAL VOC 2012, your own segmentation folder, and MSRC-21 (a preset of it).

FashionScenes are bundled scenes with exact masks and boxes; the others are read from folders you provide.
"""

from hiercam.datasets._folder_files import FolderClasses, read_folder_classes
from hiercam.datasets.fake_msrc import write_fake_msrc21
from hiercam.datasets.fake_voc import write_fake_voc
from hiercam.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_garments
from hiercam.datasets.fashion_scenes import FashionScenes, SceneBatch, SceneSample, collate_scenes
from hiercam.datasets.folder import FolderLayout, SegmentationFolder, SegmentationSample
from hiercam.datasets.folder_check import ClassCounts, FolderReport, SplitReport, check_folder
from hiercam.datasets.images import load_image
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
    # your own segmentation folder
    "SegmentationFolder",
    "SegmentationSample",
    "FolderLayout",
    "FolderClasses",
    "read_folder_classes",
    "check_folder",
    "FolderReport",
    "SplitReport",
    "ClassCounts",
    # image files as model inputs
    "load_image",
    # MSRC-21 (real photos, read from a folder the user provides)
    "MSRC21",
    "MSRC21Sample",
    "MSRC21_CLASSES",
    "MSRC21_STUFF_CLASSES",
    "write_fake_msrc21",
]
