#!/usr/bin/env python
"""Check an installed fishnet_d2 as a user who installed the wheel uses it (tools/check_wheel.sh
runs it in fresh environments; run it from outside the repository, so that Python finds the
installed package and not the source tree):

1. every module of the package imports (a dependency the package does not declare fails here);
2. the README's path: a config by name, its model built, ImageNet weights by name from a local
   mirror, one training step, ``--eval-only``, and predict on an image, with the command lines of
   tools/train_net.py and tools/predict.py (``--tools DIR``: copies of them, which import only the
   installed package).

    python tools/check_installed.py --tools /tmp/tools --work /tmp/work

Small inputs: FishNet-99 Mask R-CNN (the smallest published ImageNet weights, random values in
the official file's layout) on the demo's synthetic dataset at 128 pixels, one iteration.
"""

import argparse
import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import List

CONFIG = "COCO-InstanceSegmentation/mask_rcnn_fishnet99_FPN_1x.yaml"
WEIGHTS = "fishnet://ImageNet/fishnet99_official"
SMALL = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", "('fishnet_demo_train',)",
    "DATASETS.TEST", "('fishnet_demo_val',)",
    "MODEL.ROI_HEADS.NUM_CLASSES", "4",
    "INPUT.MASK_FORMAT", "bitmask",  # the demo dataset's masks are RLE
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "1",
    "SOLVER.MAX_ITER", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.EVAL_PERIOD", "0",
    # Evaluation of the 200 validation images in seconds, not minutes (random heads' proposals).
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "50",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
    "TEST.DETECTIONS_PER_IMAGE", "5",
]  # fmt: skip


def import_every_module() -> List[str]:
    """Import each module of the installed fishnet_d2; returns their names."""
    import fishnet_d2

    names = ["fishnet_d2"]
    for module in pkgutil.walk_packages(fishnet_d2.__path__, "fishnet_d2."):
        if module.name.startswith("fishnet_d2.timm_models") and importlib.util.find_spec("timm") is None:
            continue  # the extra [timm]'s modules import timm (tests/test_timm.py checks them without it)
        importlib.import_module(module.name)
        names.append(module.name)
    return names


def write_mirror(directory: Path) -> None:
    """The official FishNet-99 file as its source publishes it (random values, every key and
    shape), under its published file name: a mirror directory (FISHNET_D2_MIRROR)."""
    import torch

    from fishnet_d2 import FISHNET_VARIANTS
    from fishnet_d2.weights.official_layout import official_layout
    from fishnet_d2.weights.zoo import PUBLISHED_WEIGHTS

    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, (_, shape) in official_layout(FISHNET_VARIANTS[99], 1000).items():
        if key.endswith("running_var"):
            value = 1.0 + 0.1 * torch.rand(shape, generator=generator)
        elif key.endswith("num_batches_tracked"):
            value = torch.tensor(0)
        else:
            value = 0.01 * torch.randn(shape, generator=generator)
        state_dict[f"module.{key}"] = value
    directory.mkdir(parents=True, exist_ok=True)
    name = WEIGHTS.rsplit("/", 1)[1]
    torch.save({"state_dict": state_dict}, directory / PUBLISHED_WEIGHTS[name].file_name)


def run(command: List[str], env: dict) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", type=Path, required=True, help="copies of tools/train_net.py and predict.py")
    parser.add_argument("--work", type=Path, required=True, help="an empty directory to work in")
    args = parser.parse_args()

    import fishnet_d2

    package = Path(fishnet_d2.__file__).resolve().parent
    print(f"fishnet_d2 {fishnet_d2.__version__} from {package}")
    if "site-packages" not in package.parts:
        print("error: fishnet_d2 is not the installed package (run from outside the repository)", file=sys.stderr)
        return 1
    names = import_every_module()
    print(f"imported {len(names)} modules")

    work = args.work.resolve()
    env = dict(
        os.environ,
        FISHNET_D2_MIRROR=(work / "mirror").as_uri(),
        FISHNET_D2_CACHE=str(work / "cache"),
        DETECTRON2_DATASETS=str(work / "datasets"),
    )
    write_mirror(work / "mirror")
    output = work / "output"
    python = sys.executable
    train = [python, str(args.tools / "train_net.py"), "--config-file", CONFIG]
    run(train + [*SMALL, "MODEL.WEIGHTS", WEIGHTS, "OUTPUT_DIR", str(output)], env)
    final = output / "model_final.pth"
    run(train + ["--eval-only", *SMALL, "MODEL.WEIGHTS", str(final), "OUTPUT_DIR", str(output / "eval")], env)
    image = next((work / "datasets" / "fishnet_demo" / "val").glob("*.png"))
    predictions = work / "predictions"
    predict = [python, str(args.tools / "predict.py"), "--config-file", CONFIG, "--input", str(image)]
    run(predict + ["--output", str(predictions), "--opts", *SMALL, "MODEL.WEIGHTS", str(final)], env)
    written = sorted(p.name for p in predictions.iterdir())
    print(f"predict wrote {written}")
    if not written:
        print("error: predict wrote nothing", file=sys.stderr)
        return 1
    print("installed fishnet_d2: every module imports; config, weights, train, eval and predict run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
