#!/usr/bin/env python
"""Convert FishNet ImageNet weights to Detectron2's MODEL.WEIGHTS format.

    python tools/convert_fishnet_to_d2.py INPUT OUTPUT [--layout {official,pytorchcv,fishnet_d2}]

INPUT: an official checkpoint (e.g. fishnet150_ckpt.tar), pytorchcv's weights
(e.g. fishnet150-0475-93e26daa.pth), or a file already in fishnet_d2's keys; the layout is
recognised from the keys unless --layout names it. See fishnet_d2/weights/convert.py for what is checked
and written.
"""
import sys

from fishnet_d2.weights.convert import main

if __name__ == "__main__":
    sys.exit(main())
