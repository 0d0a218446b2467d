"""The package's Trainer checkpoints with FishNetCheckpointer and keeps everything a resumed run
needs: the model, the iteration, the LR scheduler and the optimizer (momentum buffers);
tools/train_net.py refuses bad MODEL.WEIGHTS with the checkpointer's errors."""

import pickle

import pytest
import torch
from detectron2.engine import default_argument_parser

from fishnet_d2.weights.checkpointer import CheckpointLoadError, FishNetCheckpointer, UnsafeCheckpointError
from fishnet_d2.engine import Trainer, main

from .support import tiny_mask_rcnn_cfg

# detectron2 v0.6's dataset statistics use np.int (its own code, not this project's)
pytestmark = pytest.mark.filterwarnings("ignore:`np.int` is a deprecated alias:DeprecationWarning")


@pytest.fixture
def trained(tiny_shapes, tmp_path):
    """A Trainer after 2 iterations on the tiny shapes, and its config."""
    _, names = tiny_shapes
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
        "fishnet_d2.engine.Trainer should save and load checkpoints with FishNetCheckpointer"
    )


def test_resume_restores_the_optimizer_state(trained):
    trainer, cfg = trained
    momentum = {k: v["momentum_buffer"] for k, v in trainer.optimizer.state_dict()["state"].items()}
    assert momentum, "SGD with momentum keeps a buffer per parameter"
    saved = torch.load(f"{cfg.OUTPUT_DIR}/model_final.pth", weights_only=True)
    assert "_trainer" in saved["trainer"], (
        "the checkpoint has no optimizer state: on detectron2 v0.6 DefaultTrainer does not save "
        "its SimpleTrainer's state; fishnet_d2.engine.Trainer should add state_dict / "
        "load_state_dict with '_trainer' as newer detectron2 does"
    )
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == cfg.SOLVER.MAX_ITER
    restored = resumed.optimizer.state_dict()["state"]
    assert restored.keys() == momentum.keys()
    for key, buffer in momentum.items():
        torch.testing.assert_close(restored[key]["momentum_buffer"], buffer, rtol=0, atol=0)


class CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


# MODEL.WEIGHTS -> (error, text of the message)
BAD_WEIGHTS = {
    "missing.pth": (FileNotFoundError, "missing.pth': no such file"),
    "truncated.pth": (CheckpointLoadError, "truncated.pth: not a readable torch checkpoint (truncated"),
    # pickle names open by its __module__: _io from Python 3.12, io before
    "malicious.pkl": (UnsafeCheckpointError, f"malicious.pkl: refused to load: reading it would call {open.__module__}.open"),
    "resnet.pth": (CheckpointLoadError, "resnet.pth: the weights of another model"),
    "weights.pth?strict=True": (ValueError, "Unsupported query remaining: f{'strict': ['True']}"),
}


@pytest.mark.parametrize("weights", sorted(BAD_WEIGHTS))
def test_train_net_refuses_bad_weights(tiny_shapes, tmp_path, weights):
    """tools/train_net.py's main, training or --eval-only, stops on MODEL.WEIGHTS that are not
    weights of the model, with the checkpointer's error; a malicious file runs nothing."""
    torch.save({"model": {"conv1.weight": torch.rand(64, 3, 7, 7)}}, tmp_path / "resnet.pth")
    torch.save({"model": {"conv1.weight": torch.rand(64, 3, 7, 7)}}, tmp_path / "weights.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "resnet.pth").read_bytes()[:1000])
    target = tmp_path / "created_by_unpickling"
    (tmp_path / "malicious.pkl").write_bytes(pickle.dumps({"model": CreatesAFile(str(target)), "__author__": "x"}))
    cfg = tiny_mask_rcnn_cfg()
    cfg.DATASETS.TRAIN = (tiny_shapes[1]["train"],)
    cfg.DATASETS.TEST = ()
    cfg.MODEL.WEIGHTS = str(tmp_path / weights)
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    (tmp_path / "config.yaml").write_text(cfg.dump())
    error, message = BAD_WEIGHTS[weights]
    for mode in (["--eval-only"], []):
        args = default_argument_parser().parse_args(["--config-file", str(tmp_path / "config.yaml"), *mode])
        with pytest.raises(error) as raised:
            main(args)
        assert message in str(raised.value), str(raised.value)
    assert not target.exists()
