"""Weight files: reading them without running their code (``files``, ``safe_pickle``), the
official and pytorchcv key layouts (``official_layout``, ``pytorchcv_layout``), converting an
ImageNet checkpoint into Detectron2's format (``convert``), the checkpointer training and
inference load with (``checkpointer``), and writing files atomically (``atomic_file``)."""

from .checkpointer import FishNetCheckpointer
from .files import CheckpointLoadError, UnsafeCheckpointError

__all__ = ["FishNetCheckpointer", "CheckpointLoadError", "UnsafeCheckpointError"]
