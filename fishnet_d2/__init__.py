"""FishNet (Sun et al., NeurIPS 2018) backbones for Detectron2.

``import fishnet_d2`` registers the three backbone builders below in Detectron2's
``BACKBONE_REGISTRY``, and ``fishnet://ImageNet/<name>`` (the published FishNet ImageNet weights,
:mod:`fishnet_d2.weights.handler`) in its ``PathManager``; call ``add_fishnet_config(cfg)`` before
merging a FishNet config file.

The public API, each name in ``__all__``:

* ``add_fishnet_config(cfg)``: adds ``MODEL.FISHNET`` and fishnet_d2's solver options to a
  Detectron2 config, in place.
* ``build_fishnet_backbone``, ``build_fishnet_fpn_backbone``, ``build_retinanet_fishnet_fpn_backbone``:
  the registered builders a config names in ``MODEL.BACKBONE.NAME``: the FishNet alone, FPN
  P2-P6 on it (R-CNN), FPN P3-P7 on it (RetinaNet).
* ``FishNet``: the backbone itself, a Detectron2 ``Backbone`` built from a ``FishNetArch``: the
  network as the paper writes it.
* ``optimize_fishnet(fishnet, ...)``: a built FishNet's modules substituted for the speed and
  memory paths (FrozenBN folding, channels-last, activation checkpointing, memory-efficient
  training, ``torch.compile``); ``build_fishnet(arch, ...)``: a FishNet with them, as the config's
  builder makes it (LazyConfig files call it).
* ``FishNetArch``: a FishNet's architecture (widths, blocks per stage, transfer blocks, dilations).
* ``fishnet_arch(depth, **fields)``: the ``FishNetArch`` of FishNet-99/150/201, or with ``depth=0``
  of the custom architecture ``fields`` describe.
* ``FISHNET_VARIANTS``, ``FISHNEXT_VARIANTS``: ``{depth: FishNetArch}`` of the paper's FishNets
  (99, 150, 201) and FishNeXts (150).
* ``FishNetCheckpointer``: Detectron2's ``DetectionCheckpointer`` that runs no code from the files
  it reads, refuses the weights of another model and saves atomically.
* ``CheckpointLoadError``, ``UnsafeCheckpointError``: what it raises for a file that is not a
  checkpoint of the model, and for one that would run code.
* ``__version__``: this package's version.

More, imported by module: ``fishnet_d2.model_zoo`` (the configs), ``fishnet_d2.engine`` (the
trainer and ``tools/train_net.py``'s main), ``fishnet_d2.solver``, ``fishnet_d2.evaluation``,
``fishnet_d2.weights`` (reading and converting weight files). ``fishnet_d2.apps`` holds the
programs behind ``tools/`` (predict, export, the demo, the benchmark); nothing here imports it.
"""

from .requirements import check_requirements

check_requirements()  # before anything that runs on torch or detectron2

from .config import add_fishnet_config  # noqa: E402
from .modeling import (  # noqa: E402
    FISHNET_VARIANTS,
    FISHNEXT_VARIANTS,
    FishNet,
    FishNetArch,
    build_fishnet,
    build_fishnet_backbone,
    build_fishnet_fpn_backbone,
    build_retinanet_fishnet_fpn_backbone,
    fishnet_arch,
    optimize_fishnet,
)
from .version import __version__  # noqa: E402
from .weights import CheckpointLoadError, FishNetCheckpointer, UnsafeCheckpointError  # noqa: E402

# Registrations besides the backbones (which .modeling registers):
from .weights import handler as _weights_handler  # noqa: F401,E402  registers fishnet://ImageNet/<name> in Detectron2's PathManager

__all__ = [
    "add_fishnet_config",
    "build_fishnet_backbone",
    "build_fishnet_fpn_backbone",
    "build_retinanet_fishnet_fpn_backbone",
    "FishNet",
    "FishNetArch",
    "fishnet_arch",
    "build_fishnet",
    "optimize_fishnet",
    "FISHNET_VARIANTS",
    "FISHNEXT_VARIANTS",
    "FishNetCheckpointer",
    "CheckpointLoadError",
    "UnsafeCheckpointError",
    "__version__",
]
