"""Training a FishNet Mask R-CNN on degenerate data: images without annotations, with zero-area
or out-of-image boxes, or with only crowd annotations train without error (through Detectron2's
dataset filtering, DatasetMapper and data loader); a NaN loss stops training with Detectron2's
FloatingPointError."""

import copy
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage
from PIL import Image

from .support import tiny_mask_rcnn_cfg

# detectron2 v0.6's polygon masks use np.bool (its own code, not this project's)
pytestmark = pytest.mark.filterwarnings("ignore:`np.bool` is a deprecated alias:DeprecationWarning")

SIZE = 64


def square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def annotation(bbox, segmentation, iscrowd=0, category_id=1):
    return dict(bbox=bbox, bbox_mode=BoxMode.XYWH_ABS, segmentation=segmentation, category_id=category_id, iscrowd=iscrowd)


# kind -> annotations of a 64x64 image; the kinds after "normal" leave no instance to train on.
ANNOTATIONS = {
    "normal": [annotation([8, 8, 30, 20], square(8, 8, 38, 28))],
    "no annotations": [],
    "zero-area boxes": [
        annotation([10, 10, 0, 0], [[10, 10, 10, 10, 10, 10]]),
        annotation([20, 5, 0, 30], [[20, 5, 20, 35, 20, 20]]),
        annotation([5, 40, 25, 0], [[5, 40, 30, 40, 15, 40]]),
    ],
    "boxes outside the image": [annotation([80, 70, 20, 20], square(80, 70, 100, 90))],
    "only crowd annotations": [
        annotation([4, 4, 40, 40], square(4, 4, 44, 44), iscrowd=1),
        annotation([30, 30, 30, 30], square(30, 30, 60, 60), iscrowd=1, category_id=2),
    ],
}
DEGENERATE = [kind for kind in ANNOTATIONS if kind != "normal"]
DATASET = "fishnet_tests_degenerate"
NORMAL_DATASET = "fishnet_tests_degenerate_control"  # the normal image only


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The images, one of each kind, registered as DATASET: kind -> dataset dict."""
    root = tmp_path_factory.mktemp("degenerate")
    rng = np.random.default_rng(0)
    dicts = {}
    for image_id, (kind, annotations) in enumerate(ANNOTATIONS.items()):
        path = root / f"{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        dicts[kind] = dict(file_name=str(path), image_id=image_id, height=SIZE, width=SIZE, annotations=annotations)
    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, lambda: copy.deepcopy(list(dicts.values())))
        DatasetCatalog.register(NORMAL_DATASET, lambda: [copy.deepcopy(dicts["normal"])])
    return dicts


@pytest.fixture(scope="module")
def cfg():
    cfg = tiny_mask_rcnn_cfg()
    cfg.INPUT.MASK_FORMAT = "polygon"
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.DATASETS.TRAIN = (DATASET,)
    return cfg


def test_detectron2_filters_images_without_usable_annotations(dataset):
    """DATALOADER.FILTER_EMPTY_ANNOTATIONS (on by default) drops the images without non-crowd
    annotations; the boxes that only become empty in the mapper are kept."""
    kept = get_detection_dataset_dicts([DATASET], filter_empty=True)
    expected = ["normal", "zero-area boxes", "boxes outside the image"]
    assert [d["image_id"] for d in kept] == [dataset[k]["image_id"] for k in expected]
    assert len(get_detection_dataset_dicts([DATASET], filter_empty=False)) == len(ANNOTATIONS)


@pytest.mark.parametrize("kind", DEGENERATE)
def test_mapper_and_training_step_without_instances(cfg, model, dataset, kind):
    """DatasetMapper leaves no instance (crowd ones are dropped, empty boxes filtered); a training
    step on two such images gives finite losses: no box regression or mask loss, only
    background classification."""
    mapped = DatasetMapper(cfg, is_train=True)(copy.deepcopy(dataset[kind]))
    assert mapped["image"].shape == (3, SIZE, SIZE)
    assert len(mapped["instances"]) == 0
    with EventStorage(0):  # where Detectron2's training forward logs its statistics
        losses = model.train()([mapped, copy.deepcopy(mapped)])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    for name in ("loss_rpn_loc", "loss_box_reg", "loss_mask"):
        assert losses[name].item() == 0.0, (name, losses)
    assert losses["loss_cls"].item() > 0 and losses["loss_rpn_cls"].item() > 0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_mapper_keeps_normal_instances(cfg, dataset):
    """The control: the same mapper keeps the normal image's instance."""
    mapped = DatasetMapper(cfg, is_train=True)(copy.deepcopy(dataset["normal"]))
    assert len(mapped["instances"]) == 1
    torch.testing.assert_close(mapped["instances"].gt_boxes.tensor, torch.tensor([[8.0, 8.0, 38.0, 28.0]]))


class RecordLosses(HookBase):
    def __init__(self):
        self.losses = []

    def after_step(self):
        self.losses.append(self.trainer.storage.history("total_loss").latest())


def train(cfg, model, max_iter, extra_hooks=()):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), optimizer)
    record = RecordLosses()
    trainer.register_hooks([record, *extra_hooks])
    trainer.train(0, max_iter)
    return trainer, record.losses


def test_training_with_unfiltered_degenerate_images(cfg, model, dataset):
    """Detectron2's data loader and SimpleTrainer, with FILTER_EMPTY_ANNOTATIONS off: every image
    (batches of 2 from the 5 images in random order) trains."""
    cfg = cfg.clone()
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    trainer, losses = train(cfg, model, max_iter=6)
    assert trainer.iter == 6 and len(losses) == 6
    assert all(math.isfinite(loss) for loss in losses), losses


class Poison(HookBase):
    """Fill a weight with NaN before iteration ``at``."""

    def __init__(self, parameter, at):
        self.parameter, self.at = parameter, at

    def before_step(self):
        if self.trainer.iter == self.at:
            with torch.no_grad():
                self.parameter.fill_(float("nan"))


@pytest.mark.parametrize(
    "where, at, message",
    [
        ("roi_heads.box_predictor.cls_score.weight", 0, r"Loss became infinite or NaN at iteration=0"),
        ("roi_heads.mask_head.predictor.weight", 2, r"Loss became infinite or NaN at iteration=2"),
        ("backbone.bottom_up.stem.conv1.conv.weight", 1, r"Predicted boxes or scores contain Inf/NaN"),
    ],
    ids=["box classifier at step 0", "mask predictor at step 2", "backbone at step 1"],
)
def test_nan_stops_training_with_floating_point_error(cfg, model, dataset, where, at, message):
    cfg = cfg.clone()
    cfg.DATASETS.TRAIN = (NORMAL_DATASET,)  # every batch has instances: every loss is used
    parameter = dict(model.named_parameters())[where]
    with pytest.raises(FloatingPointError, match=message):
        train(cfg, model, max_iter=6, extra_hooks=[Poison(parameter, at)])
    assert torch.isnan(parameter).all()
