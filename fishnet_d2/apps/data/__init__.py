"""Datasets: a synthetic COCO-format shapes dataset for the demo and the tests.

Importing this package registers the demo's datasets ``fishnet_demo_train`` and
``fishnet_demo_val`` (:func:`register_synthetic_shapes`); they are generated under
``$DETECTRON2_DATASETS/fishnet_demo`` (default ``datasets/fishnet_demo``) when first loaded.
"""

from .register import DEMO_DATASET_PREFIX, DEMO_SPEC, demo_dataset_root, register_synthetic_shapes
from .shapes import (
    SHAPE_CATEGORIES,
    ShapeImageParams,
    ShapeInstance,
    ShapesImage,
    render_shapes_image,
)
from .synthetic import (
    SPLITS,
    SyntheticShapesSpec,
    coco_categories,
    ensure_synthetic_shapes,
    is_complete,
    render_split,
    split_paths,
)

__all__ = [
    "DEMO_DATASET_PREFIX",
    "DEMO_SPEC",
    "demo_dataset_root",
    "register_synthetic_shapes",
    "SHAPE_CATEGORIES",
    "ShapeImageParams",
    "ShapeInstance",
    "ShapesImage",
    "render_shapes_image",
    "SPLITS",
    "SyntheticShapesSpec",
    "coco_categories",
    "ensure_synthetic_shapes",
    "is_complete",
    "render_split",
    "split_paths",
]

register_synthetic_shapes()
