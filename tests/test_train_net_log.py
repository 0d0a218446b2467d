"""fishnet_d2's log messages in a tools/train_net.py run go through Detectron2's logging set-up, as
Detectron2's own do: timestamped, with their level, on the console (rank 0) and in
OUTPUT_DIR/log.txt. The message read here: the warning that a FishNet with FrozenBN trains from
scratch, which fishnet_d2's Trainer logs."""

import os
import re
import subprocess
import sys

import pytest

from .support import REPO, TINY_SHAPES_PREFIX, tiny_mask_rcnn_cfg

# tools/train_net.py's main, in a new process (the repository on its PYTHONPATH) that first
# registers the tests' tiny shapes dataset.
TRAIN_NET = """
import sys
from pathlib import Path
from tests.support import register_tiny_shapes
register_tiny_shapes(Path(sys.argv[1]))
from detectron2.engine import default_argument_parser
from fishnet_d2.engine import launch_from_args, main
launch_from_args(main, default_argument_parser().parse_args(sys.argv[2:]))
"""
WARNING = "Training a FishNet from scratch with MODEL.FISHNET.NORM FrozenBN and no MODEL.WEIGHTS"


@pytest.mark.slow
def test_a_fishnet_d2_warning_is_in_log_txt_and_on_the_console_with_time_and_level(tiny_shapes, tmp_path):
    root, names = tiny_shapes
    cfg = tiny_mask_rcnn_cfg()
    cfg.MODEL.FISHNET.NORM = "FrozenBN"
    cfg.MODEL.WEIGHTS = ""
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.MAX_ITER = 1
    cfg.SOLVER.IMS_PER_BATCH = 2
    (tmp_path / "config.yaml").write_text(cfg.dump())
    output = tmp_path / "output"
    process = subprocess.run(
        [sys.executable, "-c", TRAIN_NET, str(root), "--config-file", str(tmp_path / "config.yaml"),
         "OUTPUT_DIR", str(output), "MODEL.DEVICE", "cpu"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    assert names["train"].startswith(TINY_SHAPES_PREFIX)

    log = (output / "log.txt").read_text()
    timestamp = r"\d\d/\d\d \d\d:\d\d:\d\d"
    in_file = [line for line in log.splitlines() if WARNING in line]
    assert len(in_file) == 1 and re.match(rf"\[{timestamp}\] fishnet_d2 WARNING: {re.escape(WARNING)}", in_file[0]), in_file
    on_console = [line for line in process.stdout.splitlines() if WARNING in line]
    # Detectron2's console format: "WARNING [time name]: message" (coloured on a terminal).
    assert len(on_console) == 1 and re.search(rf"WARNING.*\[{timestamp} fishnet_d2\]:.* {re.escape(WARNING)}", on_console[0]), on_console
    assert WARNING not in process.stderr, "logged by Python's last-resort handler too"
