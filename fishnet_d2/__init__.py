"""FishNet backbones for Detectron2. Importing this package registers the backbones."""
from .version import __version__
