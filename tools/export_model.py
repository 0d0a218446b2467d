#!/usr/bin/env python
"""Export a FishNet detector to TorchScript or ONNX, as Detectron2's tools/deploy/export_model.py,
and check the exported model against eager mode.

    python tools/export_model.py --config-file CONFIG --export-method {scripting,tracing} \
        --format {torchscript,onnx} --output DIR [--sample-image IMAGE] MODEL.WEIGHTS model_final.pth

CONFIG is a config file or a fishnet_d2 config name. Everything it does is in fishnet_d2.apps.export.
"""

import sys

from detectron2.utils.logger import setup_logger

import fishnet_d2.apps.data  # noqa: F401  registers the demo datasets (configs/Demo)
from fishnet_d2.apps.export import main

if __name__ == "__main__":
    setup_logger(name="fishnet_d2")  # its log messages as Detectron2's demo.py shows its own
    sys.exit(main())
