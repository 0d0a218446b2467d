from .arch import FISHNET_VARIANTS, FishNetArch
from .fishnet import FishNet

__all__ = ["FISHNET_VARIANTS", "FishNetArch", "FishNet"]
