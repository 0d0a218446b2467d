"""fishnet_d2's configs by name, as ``detectron2.model_zoo`` gives Detectron2's.

    from fishnet_d2 import model_zoo
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.yaml")

Names are paths relative to the repository's ``configs/``, the one copy of every config file. An
installed fishnet_d2 (``pip install .``) carries them as package data, ``fishnet_d2/model_zoo/
configs``, which setup.py links to ``configs/`` when it builds (as Detectron2's setup.py does);
a source checkout that was never built reads ``configs/`` beside the package.
"""

from pathlib import Path
from typing import Any, List

from detectron2.config import CfgNode, LazyConfig, get_cfg

from ..config import add_fishnet_config

__all__ = ["configs_dir", "list_configs", "get_config_file", "get_config", "resolve_config_file"]

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
