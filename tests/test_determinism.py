"""Two CPU training runs of the package's Trainer with the same SEED give identical losses."""

from typing import Dict, List

import pytest
from detectron2.utils.env import seed_all_rng

from fishnet_d2.engine import Trainer

from .support import tiny_mask_rcnn_cfg

# Raised inside detectron2 v0.6's data code (np.int; bitmasks from read-only arrays).
pytestmark = [
    pytest.mark.filterwarnings("ignore:`np.int` is a deprecated alias:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning"),
]

STEPS = 3


def losses_of_a_run(names, output_dir, seed) -> Dict[str, List[float]]:
    """Every loss of the first STEPS iterations, as the trainer's event storage recorded them."""
    cfg = tiny_mask_rcnn_cfg()
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0  # data order from the seeded sampler alone
    cfg.SOLVER.MAX_ITER = STEPS
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.SEED = seed
    cfg.OUTPUT_DIR = str(output_dir)
    seed_all_rng(cfg.SEED)  # what tools/train_net.py's default_setup does with SEED (rank 0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    histories = trainer.storage.histories()
    losses = {name: [value for value, _ in h.values()] for name, h in histories.items() if "loss" in name}
    assert all(len(values) == STEPS for values in losses.values()), losses
    return losses


def test_same_seed_same_losses(tiny_shapes, tmp_path):
    _, names = tiny_shapes
    first = losses_of_a_run(names, tmp_path / "first", seed=123)
    second = losses_of_a_run(names, tmp_path / "second", seed=123)
    assert {"total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(first)
    assert first == second  # exactly: same data order, same initial weights, same sampling
    # The control: another seed gives other losses (the seed is what made them equal).
    other = losses_of_a_run(names, tmp_path / "other", seed=321)
    assert other["total_loss"] != first["total_loss"]
