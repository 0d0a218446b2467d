"""Detectron2's export tools (``detectron2.export``: ``TracingAdapter``, ``scripting_with_instances``,
``flatten_to_tuple``) on every Detectron2 build fishnet_d2 supports.

Detectron2 main imports them as ``detectron2.export``. Detectron2 v0.6's
``detectron2/export/__init__.py`` imports caffe2 first, and current torch ships no caffe2, so there
the package cannot be imported; its TorchScript and tracing modules themselves need only torch and
Detectron2, and are loaded here without the package's ``__init__``: under a bare
``detectron2.export`` package (the directory, no code run) that stays in ``sys.modules`` -- the
modules look themselves up there when they script.
"""

import dataclasses
import importlib
import sys
import types
from pathlib import Path
from typing import Any, Callable

import detectron2

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
    how: str  # "detectron2.export", or how it was loaded on v0.6


def _modules() -> Detectron2Export:
    flatten = importlib.import_module("detectron2.export.flatten")
    torchscript = importlib.import_module("detectron2.export.torchscript")
    return Detectron2Export(
        flatten.TracingAdapter, torchscript.scripting_with_instances, flatten.flatten_to_tuple, ""
    )


def detectron2_export() -> Detectron2Export:
    """Detectron2's export tools; :class:`ExportUnavailableError` when this Detectron2 has none that
    import.

    Importing them also applies Detectron2's TorchScript patches (``torchscript_patch``)."""
    existing = sys.modules.get("detectron2.export")
    if existing is None or getattr(existing, "__file__", None) is not None:  # not the bare package
        try:
            importlib.import_module("detectron2.export")
        except ModuleNotFoundError as e:
            if e.name is None or not e.name.startswith("caffe2"):
                raise ExportUnavailableError(
                    f"detectron2.export cannot be imported: {e}; {INSTALL_HINT}"
                ) from e
        else:
            return dataclasses.replace(_modules(), how="detectron2.export")
    # Detectron2 v0.6: the package imports caffe2; its export modules do not.
    if "detectron2.export" not in sys.modules:
        package = types.ModuleType(
            "detectron2.export", "detectron2.export's directory without its __init__ (fishnet_d2)"
        )
        package.__path__ = [str(Path(detectron2.__file__).parent / "export")]
        sys.modules["detectron2.export"] = package
    try:
        modules = _modules()
    except Exception as e:
        raise ExportUnavailableError(
            f"detectron2 {detectron2.__version__} at {Path(detectron2.__file__).parent}: its "
            "detectron2.export imports caffe2, which current torch no longer ships, and its "
            f"TorchScript modules could not be loaded without it ({type(e).__name__}: {e}); "
            f"{INSTALL_HINT}"
        ) from e
    how = "detectron2.export.flatten and .torchscript (this detectron2's detectron2.export imports caffe2)"
    return dataclasses.replace(modules, how=how)
