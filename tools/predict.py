#!/usr/bin/env python
"""Predict images or a video with a FishNet model, as Detectron2's demo/demo.py: draw the
predictions and write them as COCO results.

    python tools/predict.py --config-file CONFIG --input photos/ 'more/*.jpg' --output out/ \
        MODEL.WEIGHTS model_final.pth
    python tools/predict.py --config-file CONFIG --input datasets/fishnet_demo/val --dataset fishnet_demo_val \
        --confidence-threshold 0.05 --output out/ MODEL.WEIGHTS model_final.pth   # results to evaluate
    python tools/predict.py --config-file CONFIG --video-input clip.mp4 --output out/clip.mp4

CONFIG is a config file or a fishnet_d2 config name. Everything it does is in fishnet_d2.apps.predict.
"""

import sys

from detectron2.utils.logger import setup_logger

import fishnet_d2.apps.data  # noqa: F401  registers the demo datasets (configs/Demo)
from fishnet_d2.apps.predict import main

if __name__ == "__main__":
    setup_logger(name="fishnet_d2")  # its log messages as Detectron2's demo.py shows its own
    sys.exit(main())
