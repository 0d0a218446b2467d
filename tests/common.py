"""Shared helpers for the tests: a tiny FishNet and Detectron2 configs that use it."""

from pathlib import Path

from detectron2.config import CfgNode, get_cfg

from fishnet_d2 import add_fishnet_config

REPO = Path(__file__).resolve().parents[1]
# Reference data made with the official FishNet code (tests/data/README.md says what and whence).
REFERENCE = REPO / "tests" / "data"

# A FishNet small enough for CPU tests: 3 stages per part, one block each.
TINY_ARCH = dict(
    STEM_CHANNELS=16,
    TAIL_CHANNELS=[16, 32, 64],
    BODY_CHANNELS=[64, 48, 32],
    HEAD_CHANNELS=[48, 112, 208],
    TAIL_BLOCKS=[1, 1, 1],
    BRIDGE_BLOCKS=1,
    BODY_BLOCKS=[1, 1, 1],
    HEAD_BLOCKS=[1, 1, 1],
    BODY_TRANSFER_BLOCKS=[1, 1, 1],
    HEAD_TRANSFER_BLOCKS=[1, 1, 1],
)


def fishnet_cfg() -> CfgNode:
    """Detectron2's default config with MODEL.FISHNET added and the plain FishNet backbone, on CPU."""
    cfg = get_cfg()
    add_fishnet_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_fishnet_backbone"
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def use_tiny_arch(cfg: CfgNode) -> CfgNode:
    """Switch cfg's FishNet to TINY_ARCH (DEPTH 0), in place."""
    cfg.MODEL.FISHNET.DEPTH = 0
    for key, value in TINY_ARCH.items():
        cfg.MODEL.FISHNET.ARCH[key] = value
    return cfg
