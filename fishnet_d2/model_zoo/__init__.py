"""fishnet_d2's configs by name, as ``detectron2.model_zoo`` gives Detectron2's.

    from fishnet_d2 import model_zoo
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.yaml")

Names are paths relative to the repository's ``configs/``, the one copy of every config file. An
installed fishnet_d2 (``pip install .``) carries them as package data, ``fishnet_d2/model_zoo/
configs``, which setup.py links to ``configs/`` when it builds (as Detectron2's setup.py does);
a source checkout that was never built reads ``configs/`` beside the package.
"""

import argparse
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg

from ..config import add_fishnet_config

__all__ = [
    "configs_dir",
    "list_configs",
    "get_config_file",
    "get_config",
    "resolve_config_file",
    "add_config_arguments",
    "load_config",
]

_PACKAGED = Path(__file__).resolve().parent / "configs"
_SOURCE_CHECKOUT = Path(__file__).resolve().parents[2] / "configs"


def configs_dir() -> Path:
    """Where the config files are: the package's copy when installed, else the checkout's."""
    return _PACKAGED if _PACKAGED.is_dir() else _SOURCE_CHECKOUT


def list_configs() -> List[str]:
    """The names of every YAML and LazyConfig (``.py``) config, ``_BASE_`` files and the LazyConfig
    building blocks (``common/``) included."""
    root = configs_dir()
    files = [p for p in root.rglob("*") if p.suffix in (".yaml", ".py") and p.name != "__init__.py"]
    return sorted(p.relative_to(root).as_posix() for p in files)


def get_config_file(config_path: str) -> str:
    """The path of the config ``config_path`` (e.g. ``"COCO-Detection/faster_rcnn_fishnet150_FPN_1x.yaml"``)."""
    path = configs_dir() / config_path
    if not path.is_file():
        names = [n for n in list_configs() if not n.startswith("common/")]
        raise FileNotFoundError(
            f"{config_path!r} is not a fishnet_d2 config; available ({len(names)}): {', '.join(names)}"
        )
    return str(path)


def get_config(config_path: str) -> Any:
    """The config ``config_path``: a ``CfgNode`` with fishnet_d2's keys for YAML files, the
    LazyConfig (an omegaconf ``DictConfig``) for ``.py`` files."""
    path = get_config_file(config_path)
    if path.endswith(".py"):
        return LazyConfig.load(path)
    cfg: CfgNode = get_cfg()
    add_fishnet_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def resolve_config_file(path_or_name: str) -> str:
    """``path_or_name`` itself when it is a file, else the fishnet_d2 config of that name: what
    the tools' ``--config-file`` accepts."""
    if Path(path_or_name).is_file():
        return path_or_name
    return get_config_file(path_or_name)


class _AppendOverrides(argparse.Action):
    """Adds its ``KEY VALUE`` items to those given before (``--opts`` and trailing ones)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(getattr(namespace, self.dest, None) or []) + list(values))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config-file`` (a path or a fishnet_d2 config name) and config overrides, ``KEY VALUE``
    pairs after the options as Detectron2's ``train_net.py`` and ``export_model.py`` take them, or
    after ``--opts`` as its ``demo.py`` does; both land in ``args.opts``, what :func:`load_config`
    reads."""
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="a config file, or the name of a fishnet_d2 config (fishnet_d2.model_zoo.list_configs())",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        action=_AppendOverrides,
        metavar="KEY VALUE",
        help="config overrides, as the trailing ones (Detectron2's demo.py form)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        action=_AppendOverrides,
        metavar="KEY VALUE",
        help="config overrides after the options, e.g. MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu",
    )


def load_config(
    config_file: str, opts: Sequence[str] = (), *, confidence_threshold: Optional[float] = None
) -> CfgNode:
    """The frozen config of ``config_file`` with fishnet_d2's keys and the ``KEY VALUE`` overrides
    ``opts``.

    Args:
        config_file: a YAML file, or the name of a fishnet_d2 config (``fishnet_d2.model_zoo``).
        opts: ``KEY VALUE`` pairs, as Detectron2's tools take them.
        confidence_threshold: when given, the score threshold of every head (RetinaNet's, the ROI
            heads', Panoptic FPN's instances), set after ``opts`` as Detectron2's demo does.

    Raises:
        FileNotFoundError: ``config_file`` is neither a file nor a fishnet_d2 config name.
        ValueError: an odd number of ``opts``, a threshold outside [0, 1], or ``MODEL.DEVICE``
            CUDA on a machine without one.
    """
    options = [o for o in opts[::2] if o.startswith("-")]
    if options:
        raise ValueError(
            f"config overrides are KEY VALUE pairs, after every option; {options[0]} is among them: {list(opts)}"
        )
    if len(opts) % 2:
        raise ValueError(f"config overrides are KEY VALUE pairs; got an odd number of items: {list(opts)}")
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
            "'cpu' (add the override `MODEL.DEVICE cpu`)"
        )
    cfg.freeze()
    return cfg
