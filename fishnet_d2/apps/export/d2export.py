"""Detectron2's export tools (``detectron2.export``: ``TracingAdapter``, ``scripting_with_instances``,
``flatten_to_tuple``) on every Detectron2 build fishnet_d2 supports (on v0.6 through
:func:`fishnet_d2.backports.detectron2_export_modules`), or an error that says what to install.
"""

import dataclasses
from pathlib import Path
from typing import Any, Callable

import detectron2

from ...backports import DETECTRON2_EXPORT_SOURCE, detectron2_export_modules

__all__ = ["ExportUnavailableError", "INSTALL_HINT", "Detectron2Export", "detectron2_export"]

INSTALL_HINT = (
    "install a compiled detectron2 main, e.g. in a new environment: "
    "VENV=.venv-d2main D2_SOURCE=git bash tools/setup_env.sh (or D2_SOURCE=/path/to/detectron2 "
    "for a local source tree or archive)"
)


class ExportUnavailableError(RuntimeError):
    """This Detectron2 cannot export: the message says why and what to install."""


@dataclasses.dataclass(frozen=True)
class Detectron2Export:
    """What fishnet_d2 uses of ``detectron2.export``."""

    TracingAdapter: type
    scripting_with_instances: Callable[..., Any]
    flatten_to_tuple: Callable[..., Any]
    how: str  # how the modules were loaded


def detectron2_export() -> Detectron2Export:
    """Detectron2's export tools; :class:`ExportUnavailableError` when this Detectron2 has none that
    load."""
    try:
        flatten, torchscript = detectron2_export_modules()
    except Exception as e:
        raise ExportUnavailableError(
            f"detectron2 {detectron2.__version__} at {Path(detectron2.__file__).parent}: its export "
            f"tools cannot be loaded: {type(e).__name__}: {e}; {INSTALL_HINT}"
        ) from e
    return Detectron2Export(
        flatten.TracingAdapter, torchscript.scripting_with_instances, flatten.flatten_to_tuple, DETECTRON2_EXPORT_SOURCE
    )
