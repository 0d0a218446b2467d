"""Every YAML config under configs/: what it describes at full size, and that it builds (shrunk to
the tiny FishNet) and trains one step on hand-made inputs."""

import re

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from fishnet_d2 import FishNet
from fishnet_d2.solver import build_optimizer

from .support import REPO, fishnet_cfg, shrink_config, synthetic_batch

CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))
# The model-zoo family: <model>_fishnet<depth>_FPN_<schedule>.yaml, and the paper's configs.
FAMILY = [c for c in CONFIGS if re.search(r"_fishnet\d+_(FPN_)?(1x|3x|paper)\.yaml$", c)]
SCHEDULES = {"1x": (90000, (60000, 80000)), "3x": (270000, (210000, 250000))}
RGB_MEAN = [123.675, 116.280, 103.530]
RGB_STD = [58.395, 57.120, 57.375]


def load(path: str):
    cfg = fishnet_cfg()
    cfg.merge_from_file(str(REPO / path))
    return cfg


def test_the_family_is_complete():
    expected = {
        f"configs/{folder}/{model}_fishnet{depth}_FPN_{schedule}.yaml"
        for folder, model in (
            ("COCO-InstanceSegmentation", "mask_rcnn"),
            ("COCO-Detection", "faster_rcnn"),
            ("COCO-Detection", "retinanet"),
        )
        for depth in (99, 150, 201)
        for schedule in ("1x", "3x")
    }
    expected |= {
        "configs/COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.yaml",
        "configs/COCO-Detection/faster_rcnn_fishnet150_FPN_paper.yaml",
        "configs/COCO-PanopticSegmentation/panoptic_fpn_fishnet150_1x.yaml",
        "configs/COCO-PanopticSegmentation/panoptic_fpn_fishnet150_3x.yaml",
        "configs/Misc/semantic_fishnet150_FPN_1x.yaml",
    }
    assert expected <= set(CONFIGS)


@pytest.mark.parametrize("path", FAMILY)
def test_family_config_values(path):
    """Depth and weights from the file name, the model of its folder, the schedule of its suffix,
    FPN on the fish head, RGB input normalized as the ImageNet models were trained."""
    cfg = load(path)
    name = path.rsplit("/", 1)[1]
    depth = int(re.search(r"fishnet(\d+)", name).group(1))
    assert cfg.MODEL.FISHNET.DEPTH == depth
    published = {99: "fishnet99_official", 150: "fishnet150_official", 201: "fishnet201_official_welltrained"}
    assert cfg.MODEL.WEIGHTS == f"fishnet://ImageNet/{published[depth]}"
    assert cfg.MODEL.FISHNET.NORM == "FrozenBN"
    assert cfg.MODEL.FISHNET.FREEZE_STEM_CONV1 is True
    assert set(cfg.MODEL.FPN.IN_FEATURES) <= set(cfg.MODEL.FISHNET.OUT_FEATURES)
    assert (cfg.INPUT.FORMAT, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD) == ("RGB", RGB_MEAN, RGB_STD)
    if name.startswith("retinanet"):
        assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
        assert cfg.MODEL.BACKBONE.NAME == "build_retinanet_fishnet_fpn_backbone"
        assert cfg.MODEL.FPN.IN_FEATURES == ["head3", "head4", "head5"]
        assert cfg.SOLVER.BASE_LR == 0.01
    else:
        assert cfg.MODEL.BACKBONE.NAME == "build_fishnet_fpn_backbone"
        assert cfg.MODEL.FPN.IN_FEATURES == ["head2", "head3", "head4", "head5"]
        expected_arch = {"semantic": "SemanticSegmentor", "panoptic": "PanopticFPN"}.get(
            name.split("_")[0], "GeneralizedRCNN"
        )
        assert cfg.MODEL.META_ARCHITECTURE == expected_arch
        assert cfg.MODEL.MASK_ON is name.startswith(("mask_rcnn", "panoptic"))
    schedule = name[: -len(".yaml")].rsplit("_", 1)[1]
    if schedule in SCHEDULES:
        assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == SCHEDULES[schedule]
        assert cfg.SOLVER.IMS_PER_BATCH == 16
        assert not cfg.SOLVER.CLIP_GRADIENTS.ENABLED


def _trained_parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


EXPECTED_LOSSES = {
    "GeneralizedRCNN": {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"},
    "RetinaNet": {"loss_cls", "loss_box_reg"},
    "SemanticSegmentor": {"loss_sem_seg"},
    "PanopticFPN": {"loss_sem_seg", "loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"},
}


@pytest.mark.parametrize("path", CONFIGS)
def test_config_trains_one_step(path):
    cfg = shrink_config(load(path))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    assert isinstance(model.backbone.bottom_up, FishNet)
    if cfg.MODEL.FISHNET.FREEZE_STEM_CONV1:
        assert not any(p.requires_grad for p in model.backbone.bottom_up.stem.conv1.parameters())
    before = _trained_parameters(model)
    optimizer = build_optimizer(cfg, model)
    with EventStorage(0):
        losses = model(synthetic_batch())
        sum(losses.values()).backward()
        optimizer.step()

    expected = EXPECTED_LOSSES[cfg.MODEL.META_ARCHITECTURE]
    if cfg.MODEL.MASK_ON and cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        expected = expected | {"loss_mask"}
    assert set(losses) == expected
    assert all(torch.isfinite(value) for value in losses.values())
    after = dict(model.named_parameters())
    changed = [name for name, value in before.items() if not torch.equal(value, after[name])]
    assert any(name.startswith("backbone.bottom_up.") for name in changed)
