"""The paper's per-category numbers (Li et al., CVPR 2021), for results tables.

Image AUROC: Table 1, CutPaste (3-way), ResNet-18 from scratch, mean of 5 runs; means 97.0 textures,
94.4 objects, 95.2 overall. Pixel AUROC: the patch-level 3-way model (localization table); mean 96.0.
"""

PAPER_IMAGE_AUROC: dict[str, float] = {
    "carpet": 93.1,
    "grid": 99.9,
    "leather": 100.0,
    "tile": 93.4,
    "wood": 98.6,
    "bottle": 98.3,
    "cable": 80.6,
    "capsule": 96.2,
    "hazelnut": 97.3,
    "metal_nut": 99.3,
    "pill": 92.4,
    "screw": 86.3,
    "toothbrush": 98.3,
    "transistor": 95.5,
    "zipper": 99.4,
}

PAPER_PIXEL_AUROC: dict[str, float] = {
    "carpet": 98.3,
    "grid": 97.5,
    "leather": 99.5,
    "tile": 90.5,
    "wood": 95.5,
    "bottle": 97.6,
    "cable": 90.0,
    "capsule": 97.4,
    "hazelnut": 97.3,
    "metal_nut": 93.1,
    "pill": 95.7,
    "screw": 96.7,
    "toothbrush": 98.1,
    "transistor": 93.0,
    "zipper": 99.3,
}

PAPER_MEAN_IMAGE_AUROC = 95.2
PAPER_ENSEMBLE_IMAGE_AUROC = 96.1
PAPER_MEAN_PIXEL_AUROC = 96.0
