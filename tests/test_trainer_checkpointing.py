"""The package's Trainer checkpoints with FishNetCheckpointer and keeps everything a resumed run
needs: the model, the iteration, the LR scheduler and the optimizer (momentum buffers)."""

import pytest
import torch

from fishnet_d2.checkpoint import FishNetCheckpointer
from fishnet_d2.engine import Trainer

from .tiny_detection import tiny_mask_rcnn_cfg, tiny_shapes


@pytest.fixture
def trained(tmp_path_factory, tmp_path):
    """A Trainer after 2 iterations on the tiny shapes, and its config."""
    _, names = tiny_shapes(tmp_path_factory)
    cfg = tiny_mask_rcnn_cfg()
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer, cfg


def test_trainer_uses_fishnet_checkpointer(trained):
    trainer, _ = trained
    assert isinstance(trainer.checkpointer, FishNetCheckpointer), (
        "fishnet_d2.engine.Trainer.__init__ should build its checkpointer with "
        "FishNetCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)) (issue 6)"
    )


def test_resume_restores_the_optimizer_state(trained):
    trainer, cfg = trained
    momentum = {k: v["momentum_buffer"] for k, v in trainer.optimizer.state_dict()["state"].items()}
    assert momentum, "SGD with momentum keeps a buffer per parameter"
    saved = torch.load(f"{cfg.OUTPUT_DIR}/model_final.pth", weights_only=True)
    assert "_trainer" in saved["trainer"], (
        "the checkpoint has no optimizer state: on detectron2 v0.6 DefaultTrainer does not save "
        "its SimpleTrainer's state; fishnet_d2.engine.Trainer should add state_dict / "
        "load_state_dict with '_trainer' as newer detectron2 does (issue 6)"
    )
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == cfg.SOLVER.MAX_ITER
    restored = resumed.optimizer.state_dict()["state"]
    assert restored.keys() == momentum.keys()
    for key, buffer in momentum.items():
        torch.testing.assert_close(restored[key]["momentum_buffer"], buffer, rtol=0, atol=0)
