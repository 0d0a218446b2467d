#!/usr/bin/env python
"""Benchmark FishNet-99/150/201 against Detectron2's R-50 and R-101, each as a Mask R-CNN FPN
with FrozenBN, in one run on this machine; also FishNet-150 with every fast path off
(``fishnet150-plain``: the same network and weights, NCHW, Detectron2's own FrozenBatchNorm2d,
nothing folded), its activation checkpointing choices (``fishnet150-ckpt``: every stage;
``fishnet150-ckpt-stride4``, ``-tail``, ``-body``, ``-head``: MODEL.FISHNET.CHECKPOINT's named
choices) and FishNet-150 compiled by torch.compile's inductor (``fishnet150-compile``:
MODEL.FISHNET.COMPILE; its warm-up round spends minutes compiling on a CPU); the paths chosen by
device off (``fishnet150-nchw``: MODEL.FISHNET.CHANNELS_LAST False; ``fishnet150-unfolded``:
FOLD_FROZEN_BN False) and the ResNets in channels-last (``r50-cl``, ``r101-cl``). ``--amp fp16``
or ``bf16`` runs every step under torch.autocast (float16 training with a GradScaler, as
Detectron2's AMPTrainer).

Measures parameters, FLOPs (fvcore), backbone forward + backward time, training iteration time,
inference time per image and peak tensor memory. Times are medians over rounds; within a round
every model is measured once, one after the other (the order reversed every other round), so
that the machine's load falls on all of them alike. Writes benchmark.json, benchmark.md and
benchmark.png to --output; --write-doc puts the tables, the machine and the command into a
document (docs/performance.md).

    python tools/benchmark.py                       # everything, defaults below
    python tools/benchmark.py --quick               # smoke run: small inputs, 1 round
    python tools/benchmark.py --models fishnet150 r101 --reps 9 --device cuda
    python tools/benchmark.py --threads 2 --reps 5 --models fishnet150 fishnet150-plain r101 r50 \\
        --write-doc docs/performance.md
    python tools/benchmark.py --from-json docs/performance.json --write-doc docs/performance.md

Everything it does is in fishnet_d2.apps.benchmark.
"""

import sys

from fishnet_d2.apps.benchmark import main

if __name__ == "__main__":
    main(sys.argv[1:], description=__doc__)
