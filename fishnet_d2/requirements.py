"""The oldest torch and detectron2 fishnet_d2 runs with, checked when it is imported.

Like every Detectron2 plugin, fishnet_d2 does not install torch, torchvision or detectron2 (they
are built for a platform, a CUDA version); it refuses to run with ones older than it needs, with
the versions needed, instead of failing later inside a forward pass.
"""

import re
from typing import Dict, List, Mapping, Tuple

__all__ = ["MINIMUM_VERSIONS", "unmet_requirements", "check_requirements"]

# torch 2.4: torch.is_autocast_enabled(device_type) (memory-efficient training's autocast check)
# and nn.Module.compile (MODEL.FISHNET.COMPILE). torchvision 0.19 is torch 2.4's. detectron2 0.6:
# the oldest release with the APIs fishnet_d2 uses (LazyConfig, the v0.6 workarounds in
# backports.py). CI tests torch 2.14.1 with detectron2 v0.6 and main (docs/detectron2_versions.md).
MINIMUM_VERSIONS: Dict[str, Tuple[int, ...]] = {"torch": (2, 4), "torchvision": (0, 19), "detectron2": (0, 6)}


def _release(version: str) -> Tuple[int, ...]:
    """The release numbers a version string begins with: "2.14.1+cu121" -> (2, 14, 1)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def unmet_requirements(installed: Mapping[str, str]) -> List[str]:
    """For each package of :data:`MINIMUM_VERSIONS` in ``installed`` (name: version string) that
    is older than it needs, "name X.Y or newer (found V)"."""
    unmet = []
    for name, minimum in MINIMUM_VERSIONS.items():
        if name in installed and _release(installed[name]) < minimum:
            needed = ".".join(map(str, minimum))
            unmet.append(f"{name} {needed} or newer (found {installed[name]})")
    return unmet


def check_requirements() -> None:
    """Raise ImportError when the installed torch, torchvision or detectron2 is too old."""
    import detectron2
    import torch
    import torchvision

    installed = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
    }
    unmet = unmet_requirements(installed)
    if unmet:
        raise ImportError(f"fishnet_d2 needs {'; '.join(unmet)}: upgrade them for your platform (README.md)")
