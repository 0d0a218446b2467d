"""The config of ``tools/predict.py`` and ``tools/export_model.py``: :func:`fishnet_d2.config.load_config`."""

from ..config import load_config

__all__ = ["load_config"]
