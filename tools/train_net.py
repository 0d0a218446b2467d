#!/usr/bin/env python
"""Train or evaluate a FishNet model from a YAML config, with Detectron2's usual command line:

    python tools/train_net.py --config-file configs/COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.yaml \
        --num-gpus 8
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file CONFIG --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes
    torchrun --nproc-per-node 8 tools/train_net.py --config-file CONFIG              # or under torchrun

--resume (or a restart by torchrun) continues from the last checkpoint in OUTPUT_DIR; SIGTERM
writes a checkpoint of the current iteration and exits with status 75 (docs/cluster.md).
Everything it does is in fishnet_d2.engine (Trainer, setup, main, launch).
"""

from detectron2.engine import default_argument_parser

import fishnet_d2.apps.data  # noqa: F401  registers the demo datasets (configs/Demo)
from fishnet_d2.engine import launch_from_args, main

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch_from_args(main, args)
