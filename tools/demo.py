#!/usr/bin/env python
"""The embedded demo, run by ``make demo``: no COCO and no GPU needed.

Generates the synthetic shapes dataset (datasets/fishnet_demo, or
$DETECTRON2_DATASETS/fishnet_demo), trains configs/Demo/mask_rcnn_fishnet_tiny_FPN_demo.yaml from
scratch on CPU, evaluates COCO box and mask AP on its validation split, and writes to output/demo/:
model_final.pth, predictions.png, losses.png, metrics.json and the log.

    python tools/demo.py [--output DIR] [--num-gpus N] [KEY VALUE ...]

Everything it does is in fishnet_d2.apps.demo.
"""

from pathlib import Path

import fishnet_d2.apps.data  # noqa: F401  registers the demo datasets
from fishnet_d2.apps.demo import argument_parser, main
from fishnet_d2.engine import launch_from_args

DEMO_CONFIG = (
    Path(__file__).resolve().parents[1]
    / "configs"
    / "Demo"
    / "mask_rcnn_fishnet_tiny_FPN_demo.yaml"
)

if __name__ == "__main__":
    args = argument_parser(default_config=str(DEMO_CONFIG)).parse_args()
    print("Command Line Args:", args)
    launch_from_args(main, args)
