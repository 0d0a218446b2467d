"""FishNet in timm: ``import fishnet_d2.timm_models`` registers ``fishnet99``, ``fishnet150``,
``fishnet201`` and ``fishnext150`` (with a pretrained tag for each published weights file) in
timm's model registry, for ``timm.create_model`` and the libraries that build their backbones with
it (Hugging Face Transformers' ``TimmBackbone``, segmentation_models_pytorch's ``tu-`` encoders;
docs/timm.md shows each).

Why this import: timm has no plugin entry point; it knows the models of its own modules, and a
model that another package registers exists once the module that registers it has run (its
maintainer's advice, github.com/huggingface/pytorch-image-models/issues/1694: import the registering module before creating the model).
``import fishnet_d2`` does not import this package: the core never imports timm, which is an
optional extra (``pip install fishnet-d2[timm]``).

* :class:`TimmFishNet`: the model (fishnet_d2's ``FishNet`` and the official classifier).
* :func:`timm_key`, :func:`fishnet_d2_key`: its state_dict keys from and to fishnet_d2's.
* :func:`checkpoint_filter_fn`: weights in any layout fishnet_d2 reads, in the model's keys.
* :data:`FEATURE_LOCATIONS`: what ``feature_location`` chooses (:mod:`.features`).
"""

try:
    import timm  # noqa: F401
except ImportError as e:  # pragma: no cover - the test environment has timm
    raise ImportError(
        "fishnet_d2.timm_models registers FishNet in timm, which is not installed: "
        "pip install 'fishnet-d2[timm]' (or pip install timm)"
    ) from e

from . import fishnet  # noqa: F401  registers the models in timm
from .features import FEATURE_LOCATIONS
from .model import TimmFishNet
from .weights import checkpoint_filter_fn, fishnet_d2_key, timm_key

__all__ = ["TimmFishNet", "FEATURE_LOCATIONS", "checkpoint_filter_fn", "fishnet_d2_key", "timm_key"]
