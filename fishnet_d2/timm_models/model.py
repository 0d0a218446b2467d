"""``TimmFishNet``: fishnet_d2's FishNet as a timm model.

One network, not a copy: the model holds the Detectron2 backbone ``fishnet_d2.FishNet`` (built by
:func:`fishnet_d2.build_fishnet`, with its speed and memory paths) as ``fishnet``, and the
official classifier (fishnet_d2's ``ScoreUnit``) as ``classifier``; its state_dict is fishnet_d2's
with ``fishnet.`` before the backbone's keys (:mod:`.weights`). Around them, what timm's models
have: ``forward_features`` (the last head feature, unpooled), ``forward_head``,
``reset_classifier``, ``get_classifier``, ``num_features``, ``head_hidden_size``,
``feature_info`` and ``forward_intermediates`` (the features :mod:`.features` lists), and
``prune_intermediate_layers`` for ``features_only``.
"""

from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import FishNetArch, build_fishnet
from ..modeling.blocks import Norm, ScoreUnit, conv_init_
from ..modeling.optimize.checkpointing import Checkpointing, checkpoint_stages, checkpointed_stage_names
from .features import FeatureIndices, check_feature_location, computed_features, listed_features, take_indices
from .weights import checkpoint_filter_fn, describe_arch, load_pretrained_file

__all__ = ["TimmFishNet", "GLOBAL_POOLS"]

# The classifier's pooling: the official global average, or none ("": timm's pass-through, the
# classifier then scores every position).
GLOBAL_POOLS = ("avg", "")


class TimmFishNet(nn.Module):
    """A FishNet with the official ImageNet classifier, as timm's models are.

    ``forward(x)`` gives the logits; ``x``'s height and width must be multiples of 32
    (``2**arch.bridge_level``). Built by the registered names (``timm.create_model("fishnet150",
    ...)``), whose keyword arguments are this constructor's.
    """

    def __init__(
        self,
        arch: FishNetArch,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        norm: Norm = "BN",
        feature_location: str = "head",
        output_stride: int = 32,
        fold_frozen_bn: bool = True,
        channels_last: bool = True,
        activation_checkpointing: Checkpointing = None,
        memory_efficient: bool = False,
        compile_backend: str = "",
    ):
        """
        Args:
            arch: the architecture, e.g. ``fishnet_d2.FISHNET_VARIANTS[150]``.
            num_classes: classes of the classifier; 0: ``forward`` gives the pooled features
                before its last conv (``head_hidden_size`` of them), as timm's models do.
            in_chans: channels of the input images.
            global_pool: "avg" (the official classifier) or "" (no pooling: scores per position).
            drop_rate: dropout before the classifier's last conv (0: the official model).
            norm: FishNet's normalization (``detectron2.layers.get_norm``): "BN" (the official
                model's, trainable), "FrozenBN", "SyncBN", "GN", ...
            feature_location: the features listed by ``feature_info`` (``features_only``,
                ``forward_intermediates``): "head" (head2..head5) or "all" (:mod:`.features`).
            output_stride: 32 only (timm consumers may pass it; FishNet has no dilated variant of it).
            fold_frozen_bn, channels_last, activation_checkpointing, memory_efficient,
                compile_backend: fishnet_d2's speed and memory paths, as
                :func:`fishnet_d2.build_fishnet` takes them (docs/performance.md).
        """
        super().__init__()
        _check(num_classes, global_pool, drop_rate, output_stride)
        check_feature_location(feature_location)
        computed = [name for name, _ in computed_features(arch)]
        self.fishnet = build_fishnet(
            arch,
            in_channels=in_chans,
            norm=norm,
            out_features=computed,
            fold_frozen_bn=fold_frozen_bn,
            channels_last=channels_last,
            activation_checkpointing=activation_checkpointing,
            memory_efficient=memory_efficient,
            compile_backend=compile_backend,
        )
        self.arch = arch
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = float(drop_rate)
        self.feature_location = feature_location
        self.channels_last = channels_last
        self._checkpointed = set(checkpointed_stage_names(self.fishnet, activation_checkpointing))
        self.grad_checkpointing = bool(self._checkpointed)
        self._final_feature = computed[-1]
        self.feature_info = self._feature_info(arch, feature_location)
        self.num_features = self.fishnet.output_shape()[self._final_feature].channels
        # The official classifier: norm-ReLU-conv1x1(C -> C/2)-norm-ReLU, global average pool, conv1x1.
        self.classifier = ScoreUnit(self.num_features, max(num_classes, 1), global_pool=True, norm=norm)
        self.head_hidden_size = self.classifier.conv1.out_channels
        self.has_classifier = True
        if num_classes == 0:
            self.classifier.fc = nn.Identity()
        if channels_last:
            self.classifier.to(memory_format=torch.channels_last)

    def _feature_info(self, arch: FishNetArch, feature_location: str) -> List[Dict[str, Any]]:
        """timm's feature_info: channels, reduction (stride) and module of each listed feature,
        with its FishNet name (``name``)."""
        shapes = self.fishnet.output_shape()
        modules: Dict[str, nn.Module] = {stage.name: stage for stage in self.fishnet.stages()}
        paths = {module: path for path, module in self.named_modules()}
        info = []
        for index, (name, level) in enumerate(listed_features(arch, feature_location)):
            # The head's first feature is its first stage's refinement, before it down-samples.
            module = modules.get(name, self.fishnet.head[0].refine)
            assert shapes[name].stride == 2**level, (name, shapes[name])
            info.append(dict(num_chs=shapes[name].channels, reduction=shapes[name].stride, module=paths[module],
                             name=name, index=index))  # fmt: skip
        return info

    # --- timm's classification interface ---

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last head feature (head5 of FishNet-99/150/201: 2112 channels, stride 32), unpooled."""
        return self.fishnet(x)[self._final_feature]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The classifier on ``forward_features``' output: the logits, or with ``pre_logits`` the
        pooled features before its last conv (``head_hidden_size`` of them)."""
        if not self.has_classifier:
            raise RuntimeError("this FishNet's classifier was pruned (features_only): it has no head to run")
        head = self.classifier
        # fishnet_d2's ScoreUnit computes this in one call; its steps are spelled out because timm
        # asks for what it does not give: the features before the last conv (pre_logits), dropout
        # before it, no pooling (global_pool="").
        x = F.relu(head.norm2(head.conv1(F.relu(head.norm1(x)))))
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        if not pre_logits:
            x = head.fc(x)
        return x.flatten(1) if self.global_pool == "avg" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The classifier's last conv (``nn.Identity`` with 0 classes)."""
        if not self.has_classifier:
            raise RuntimeError("this FishNet's classifier was pruned (features_only)")
        return self.classifier.fc

    def reset_classifier(self, num_classes: int, global_pool: Union[str, None] = None) -> None:
        """A new last conv for ``num_classes`` (0: none, ``forward`` gives the pre-logits), and
        ``global_pool`` if given; the rest of the classifier keeps its weights."""
        _check(num_classes, self.global_pool if global_pool is None else global_pool, self.drop_rate, 32)
        if not self.has_classifier:
            raise RuntimeError("this FishNet's classifier was pruned (features_only): build a new model")
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = num_classes
        reference = self.classifier.conv1.weight
        if num_classes == 0:
            self.classifier.fc = nn.Identity()
            return
        fc = nn.Conv2d(self.head_hidden_size, num_classes, kernel_size=1, bias=True)
        conv_init_(fc)
        fc.to(device=reference.device, dtype=reference.dtype)
        self.classifier.fc = fc.to(memory_format=torch.channels_last) if self.channels_last else fc

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch for activation checkpointing (its train.py's ``--grad-checkpointing``):
        every stage recomputes its activations in the backward pass (``build_fishnet``'s
        ``activation_checkpointing="all"``). It substitutes the stages' classes once; turning it
        off is refused (build the model without it instead)."""
        if not enable:
            if self.grad_checkpointing:
                raise ValueError("set_grad_checkpointing(False): this FishNet was built with activation "
                                 "checkpointing; create the model without activation_checkpointing instead")
            return
        rest = [stage.name for stage in self.fishnet.stages() if stage.name not in self._checkpointed]
        self._checkpointed.update(checkpoint_stages(self.fishnet, rest))
        self.grad_checkpointing = True

    # --- features ---

    def _indices(self, indices: FeatureIndices, what: str) -> List[int]:
        hint = "" if self.feature_location == "all" else "; feature_location='all' lists the tail's and the body's too"
        return take_indices(indices, [f["name"] for f in self.feature_info], what, hint)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: FeatureIndices = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The features ``indices`` select among ``feature_info`` (timm's convention: None all,
        n the last n, negative from the end), and unless ``intermediates_only``
        ``forward_features``' output first.

        FishNet computes every feature in one pass (its body reads its tail, its head its body):
        ``stop_early`` has nothing to skip. It has no norm after its features (its
        pre-activation blocks normalize their inputs), so ``norm=True`` is refused, as is an
        ``output_fmt`` other than "NCHW".
        """
        take = self._indices(indices, "indices")
        if norm:
            raise ValueError("norm=True: FishNet has no final norm to apply to its features; allowed: norm=False")
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: FishNet's features are NCHW; allowed: 'NCHW'")
        features = self.fishnet(x)
        intermediates = [features[self.feature_info[i]["name"]] for i in take]
        if intermediates_only:
            return intermediates
        return features[self._final_feature], intermediates

    def prune_intermediate_layers(
        self, indices: FeatureIndices = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """For timm's ``features_only`` wrapper: the absolute indices ``indices`` select, and with
        ``prune_head`` the classifier removed. FishNet's stages all feed its last feature, so none
        is pruned; nor any norm (it has none after its features)."""
        take = self._indices(indices, "out_indices")
        if prune_head:
            self.classifier = None
            self.has_classifier = False
            self.num_classes = 0
        return take

    # --- weights ---

    def load_pretrained(self, path: str) -> None:
        """Load a FishNet weights file as pretrained weights: timm calls it for the files of
        ``pretrained=True`` and ``pretrained_cfg_overlay=dict(file=...)`` (their pretrained_cfg
        says ``custom_load``): :func:`.weights.load_pretrained_file`."""
        load_pretrained_file(self, path)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, also for weights in the official, pytorchcv or fishnet_d2
        layout (converted after checking their architecture: :func:`.weights.checkpoint_filter_fn`),
        so that timm's ``create_model(..., checkpoint_path=...)`` reads them."""
        if not set(state_dict) <= set(self.state_dict()):
            state_dict = checkpoint_filter_fn(state_dict, self)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return f"{describe_arch(self.arch)}, feature_location={self.feature_location!r}"


def _check(num_classes: int, global_pool: str, drop_rate: float, output_stride: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes={num_classes!r}: allowed 0 (no classifier conv) or a positive integer")
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool={global_pool!r}: allowed 'avg' (the official classifier) or '' (no pooling)")
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate={drop_rate!r}: allowed a probability in [0, 1)")
    if output_stride != 32:
        raise ValueError(
            f"output_stride={output_stride!r}: FishNet's features run from stride 4 to 32, all of which its "
            "head reads; allowed: 32"
        )
