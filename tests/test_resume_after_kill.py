"""A tools/train_net.py run killed with SIGKILL after a periodic checkpoint resumes with --resume
from that checkpoint, reaches MAX_ITER, and its last checkpoint loads."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from detectron2.modeling import build_model

from fishnet_d2.weights.checkpointer import FishNetCheckpointer
from fishnet_d2.apps.data import DEMO_DATASET_PREFIX

from .support import REPO, tiny_mask_rcnn_cfg

pytestmark = pytest.mark.slow  # trains in new processes

TRAIN_NET = REPO / "tools" / "train_net.py"
MAX_ITER = 24
CHECKPOINT_PERIOD = 3


def subprocess_env(datasets):
    return {**os.environ, "DETECTRON2_DATASETS": str(datasets), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def write_config(tmp_path):
    """The tiny Mask R-CNN on the demo's training set: a checkpoint every 3 iterations."""
    cfg = tiny_mask_rcnn_cfg()
    cfg.DATASETS.TRAIN = (f"{DEMO_DATASET_PREFIX}_train",)
    cfg.DATASETS.TEST = ()  # evaluation is tested in test_distributed_cpu.py
    cfg.SOLVER.MAX_ITER = MAX_ITER
    cfg.SOLVER.STEPS = (MAX_ITER - 4,)
    cfg.SOLVER.CHECKPOINT_PERIOD = CHECKPOINT_PERIOD
    cfg.SEED = 5
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    return cfg, path


def train_net(config, log, env, *extra):
    command = [sys.executable, str(TRAIN_NET), "--config-file", str(config), *extra, "MODEL.DEVICE", "cpu"]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def test_sigkill_then_resume(demo_datasets, tmp_path):
    cfg, config = write_config(tmp_path)
    output = tmp_path / "output"
    env = subprocess_env(demo_datasets)

    # 1. Train until the first periodic checkpoint is tagged, then SIGKILL the whole process group.
    with open(tmp_path / "first.log", "w") as log:
        first = train_net(config, log, env)
        try:
            deadline = time.monotonic() + 300
            while not (output / "last_checkpoint").exists():
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.1)
            os.killpg(first.pid, signal.SIGKILL)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not (output / "model_final.pth").exists(), "the run finished before it was killed"
    tag = (output / "last_checkpoint").read_text()
    saved_iter = int(re.fullmatch(r"model_(\d{7})\.pth", tag).group(1))
    assert saved_iter >= CHECKPOINT_PERIOD - 1 and (saved_iter + 1) % CHECKPOINT_PERIOD == 0
    assert saved_iter + 1 < MAX_ITER

    # 2. Resume: from the iteration after the tagged checkpoint, to MAX_ITER.
    with open(tmp_path / "resumed.log", "w") as log:
        resumed = train_net(config, log, env, "--resume")
        try:
            resumed.wait(timeout=400)
        finally:
            if resumed.poll() is None:
                os.killpg(resumed.pid, signal.SIGKILL)
                resumed.wait()
    printed = (tmp_path / "resumed.log").read_text()
    assert resumed.returncode == 0, printed[-3000:]
    assert f"Loading from {output / tag}" in printed
    starts = re.findall(r"Starting training from iteration (\d+)", printed)
    assert starts == [str(saved_iter + 1)], starts  # not from 0: line 81 puts it past the first period

    # metrics.json: the killed run's lines, then the resumed run's, which start after the checkpoint.
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    iterations = [m["iteration"] for m in metrics if "total_loss" in m]
    assert iterations and iterations[-1] == MAX_ITER - 1, iterations
    assert min(iterations) > saved_iter, iterations

    # 3. The last checkpoint loads, with the trainer's state at the last iteration.
    final = output / "model_final.pth"
    assert (output / "last_checkpoint").read_text() == "model_final.pth"
    extra = FishNetCheckpointer(build_model(cfg)).load(str(final))
    assert extra["iteration"] == extra["trainer"]["iteration"] == MAX_ITER - 1
    # The LR scheduler's and the optimizer's (momentum buffers) states, for a further resume.
    assert extra["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == MAX_ITER
    assert extra["trainer"]["_trainer"]["optimizer"]["state"], "no optimizer state"
