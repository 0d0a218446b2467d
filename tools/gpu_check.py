#!/usr/bin/env python
"""One command that proves FishNet on a GPU (docs/performance.md, "The GPU check"): correctness
against the official outputs and the plain network, mixed precision, memory and speed against
Detectron2's ResNets, a short training and a TorchScript export, in a few minutes; one JSON and
one markdown report in --output.

    python tools/gpu_check.py --output output/gpu_check               # on the GPU (make gpu-check)
    python tools/gpu_check.py --device cpu --output /tmp/gpu_check    # every part, small sizes

Exit status: 0 passed, 1 a part failed, 2 bad command line, 3 CUDA not available (nothing written).
Everything it does is in fishnet_d2.apps.gpu_check.
"""

import sys

from fishnet_d2.apps.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
