"""The LazyConfig (.py) configs: they load, their model trains, and Detectron2's
tools/lazyconfig_train_net.py sequence trains and evaluates them on a small synthetic dataset."""

import itertools
import json

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format

from fishnet_d2 import FishNet, build_fishnet

from .support import IMAGE_SIZE, REPO, shrink_lazy_model, synthetic_batch

LAZY_CONFIGS = sorted(
    p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.py") if "common" not in p.parts
)
REQUIRED = {
    "configs/COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_1x.py",
    "configs/COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_3x.py",
    "configs/COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.py",
    "configs/COCO-Detection/faster_rcnn_fishnet150_FPN_paper.py",
}


def load(path):
    return LazyConfig.load(str(REPO / path))


def test_required_lazyconfigs_exist():
    assert REQUIRED <= set(LAZY_CONFIGS)


@pytest.mark.parametrize("path", LAZY_CONFIGS)
def test_lazyconfig_has_what_lazyconfig_train_net_reads(path):
    cfg = load(path)
    assert {"model", "optimizer", "dataloader", "lr_multiplier", "train"} <= set(cfg)
    assert {"train", "test", "evaluator"} <= set(cfg.dataloader)
    assert "params" in cfg.optimizer  # lazyconfig_train_net sets cfg.optimizer.params.model
    for key in ("output_dir", "init_checkpoint", "max_iter", "amp", "ddp", "checkpointer", "eval_period", "log_period", "device"):
        assert key in cfg.train, key
    assert cfg.train.init_checkpoint == "fishnet://ImageNet/fishnet150_official"
    assert cfg.model.backbone.bottom_up._target_ is build_fishnet  # the FishNet with the YAML configs' speed paths
    assert cfg.model.backbone.bottom_up.arch.depth == 150
    assert cfg.model.input_format == cfg.dataloader.train.mapper.image_format == "RGB"
    assert cfg.dataloader.evaluator.use_fast_impl is False
    schedule = path.rsplit("_", 1)[1][: -len(".py")]
    if schedule != "paper":
        assert cfg.train.max_iter == {"1x": 90000, "3x": 270000}[schedule]
        assert cfg.lr_multiplier.scheduler.milestones[-1] == cfg.train.max_iter


class RecordGradNorm(HookBase):
    def __init__(self):
        self.norms = []

    def after_step(self):
        grads = [p.grad.flatten() for p in self.trainer.model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.cat(grads)).item())


@pytest.mark.parametrize("path", LAZY_CONFIGS)
def test_lazyconfig_model_trains(path):
    """instantiate(cfg.model), the optimizer and the LR schedule as lazyconfig_train_net does, and
    two iterations of Detectron2's SimpleTrainer on hand-made inputs. The paper configs clip the
    norm of all gradients (at 1e-3 here, so that it shows) in both iterations."""
    cfg = load(path)
    shrink_lazy_model(cfg.model)
    clipping = "clipping" in cfg.optimizer
    if clipping:
        cfg.optimizer.clipping.clip_value = 1e-3
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    model.to("cpu")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    trainer = SimpleTrainer(model, itertools.repeat(synthetic_batch()), optimizer)
    record = RecordGradNorm()
    trainer.register_hooks([hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)), record])
    trainer.train(0, 2)

    losses = {k: v for k, v in trainer.storage.latest().items() if k.startswith("loss_")}
    assert ("loss_mask" in losses) is (cfg.model.roi_heads.mask_head is not None)
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} <= set(losses)
    assert all(torch.isfinite(torch.tensor(value)) for value, _ in losses.values())
    if clipping:
        assert record.norms == pytest.approx([1e-3, 1e-3], rel=1e-3)
    else:
        assert all(norm > 1e-2 for norm in record.norms)


@pytest.mark.parametrize(
    "path",
    ["configs/COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.py", "configs/COCO-Detection/faster_rcnn_fishnet150_FPN_paper.py"],
)
def test_lazyconfig_train_net_sequence(path, tiny_shapes, tmp_path):
    """What Detectron2's tools/lazyconfig_train_net.py does (do_train, then do_test through its
    EvalHook), on the config with only the dataset, sizes and iterations changed."""
    _, names = tiny_shapes
    cfg = load(path)
    shrink_lazy_model(cfg.model, num_classes=4)
    cfg.dataloader.train.dataset.names = names["train"]
    cfg.dataloader.test.dataset.names = names["val"]
    cfg.dataloader.train.mapper.augmentations[0].short_edge_length = (IMAGE_SIZE[0],)
    cfg.dataloader.test.mapper.augmentations[0].short_edge_length = IMAGE_SIZE[0]
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.train.num_workers = cfg.dataloader.test.num_workers = 0
    cfg.dataloader.train.mapper.instance_mask_format = "bitmask"  # the dataset's masks are RLE
    cfg.model.roi_heads.box_predictor.test_score_thresh = 0.0  # detections after 2 iterations
    cfg.train.update(max_iter=2, device="cpu", output_dir=str(tmp_path), init_checkpoint="", eval_period=0)

    # tools/lazyconfig_train_net.py: do_train(args, cfg) with args.resume False
    def do_test(cfg, model):
        ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
        print_csv_format(ret)
        return ret

    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, optimizer=optim, trainer=trainer)
    results = []

    def evaluate():
        results.append(do_test(cfg, model))
        return results[-1]

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=False)
    trainer.train(0, cfg.train.max_iter)

    assert (tmp_path / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert any(m["iteration"] == cfg.train.max_iter - 1 and "total_loss" in m for m in metrics)
    assert len(results) == 1
    tasks = {"bbox", "segm"} if cfg.model.roi_heads.mask_head is not None else {"bbox"}
    assert set(results[0]) == tasks
    for task in tasks:
        assert 0.0 <= results[0][task]["AP"] <= 100.0
