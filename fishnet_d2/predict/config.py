"""The config of ``tools/predict.py`` and ``tools/export_model.py``: a config file (a path or a
fishnet_d2 config name) with ``--opts`` overrides, on a device this machine has."""

from typing import Optional, Sequence

import torch
from detectron2.config import CfgNode, get_cfg

from ..config import add_fishnet_config
from ..model_zoo import resolve_config_file

__all__ = ["load_config"]


def load_config(
    config_file: str, opts: Sequence[str] = (), *, confidence_threshold: Optional[float] = None
) -> CfgNode:
    """The frozen config of ``config_file`` with fishnet_d2's keys and the ``KEY VALUE`` overrides
    ``opts``.

    Args:
        config_file: a YAML file, or the name of a fishnet_d2 config (``fishnet_d2.model_zoo``).
        opts: ``KEY VALUE`` pairs, as Detectron2's ``--opts``.
        confidence_threshold: when given, the score threshold of every head (RetinaNet's, the ROI
            heads', Panoptic FPN's instances), set after ``opts`` as Detectron2's demo does.

    Raises:
        FileNotFoundError: ``config_file`` is neither a file nor a fishnet_d2 config name.
        ValueError: an odd number of ``opts``, a threshold outside [0, 1], or ``MODEL.DEVICE``
            CUDA on a machine without one.
    """
    if len(opts) % 2:
        raise ValueError(f"--opts takes KEY VALUE pairs; got an odd number of items: {list(opts)}")
    cfg = get_cfg()
    add_fishnet_config(cfg)
    cfg.merge_from_file(resolve_config_file(config_file))
    cfg.merge_from_list(list(opts))
    if confidence_threshold is not None:
        if not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"--confidence-threshold={confidence_threshold}: must be in [0, 1]")
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    try:
        device = torch.device(cfg.MODEL.DEVICE)
    except RuntimeError as e:
        raise ValueError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} is not a device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"MODEL.DEVICE={cfg.MODEL.DEVICE!r}, but this machine has no CUDA device; allowed here: "
            "'cpu' (add `--opts MODEL.DEVICE cpu`)"
        )
    cfg.freeze()
    return cfg
