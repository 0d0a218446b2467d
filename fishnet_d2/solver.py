"""Gradient clipping for Detectron2 optimizers: ``SOLVER.CLIP_GRADIENTS`` with the clip type
``"full_model"`` and ``UNTIL_ITER`` (clip only in the first iterations, as the paper does).

How the optimizer knows the iteration: clipping is a step pre-hook on the optimizer
(``torch.optim.Optimizer.register_step_pre_hook``) that reads the iteration the Detectron2 trainer
is running from Detectron2's event storage (``get_event_storage().iter``). Every Detectron2 training
loop keeps it up to date -- ``DefaultTrainer``, ``SimpleTrainer``/``AMPTrainer`` as
``tools/lazyconfig_train_net.py`` uses them, and ``tools/plain_train_net.py``'s loop -- and it is
restored on resume, so no hook has to be registered and a LazyConfig optimizer works unchanged.
Outside an ``EventStorage`` there is no iteration: clipping with ``until_iter > 0`` then raises.

    optimizer = build_optimizer(cfg, model)        # drop-in for detectron2.solver.build_optimizer
    add_gradient_clipping(my_optimizer, GradientClipping("full_model", 5.0, until_iter=14659))
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.utils.events import get_event_storage
from torch.utils.hooks import RemovableHandle

__all__ = [
    "CLIP_TYPES",
    "GradientClipping",
    "gradient_clipping_from_config",
    "add_gradient_clipping",
    "build_optimizer",
    "build_clipped_optimizer",
]

# "value" and "norm" clip each parameter's gradient on its own, as Detectron2 does;
# "full_model" clips the norm of all gradients together, like Detectron2's DETR project and the
# paper ("gradient clipping at max norm 5.0").
CLIP_TYPES = ("value", "norm", "full_model")

_CONFIG_KEYS = {
    "clip_type": "CLIP_TYPE",
    "clip_value": "CLIP_VALUE",
    "norm_type": "NORM_TYPE",
    "until_iter": "UNTIL_ITER",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_clipping(values: Dict[str, Any], key: Callable[[str], str]) -> None:
    """Raise ValueError naming ``key(field)``, the value and what is allowed."""
    clip_type = values["clip_type"]
    if clip_type not in CLIP_TYPES:
        raise ValueError(
            f"{key('clip_type')}={clip_type!r}: allowed {', '.join(map(repr, CLIP_TYPES))} "
            "(per-parameter value, per-parameter norm, or the norm of all gradients together)"
        )
    clip_value = values["clip_value"]
    if not _is_number(clip_value) or not clip_value > 0:
        raise ValueError(f"{key('clip_value')}={clip_value!r}: must be a number > 0")
    norm_type = values["norm_type"]
    if not _is_number(norm_type) or not norm_type > 0:
        raise ValueError(f"{key('norm_type')}={norm_type!r}: must be a number > 0 (or inf)")
    until_iter = values["until_iter"]
    if not isinstance(until_iter, int) or isinstance(until_iter, bool) or until_iter < 0:
        raise ValueError(
            f"{key('until_iter')}={until_iter!r}: must be an integer >= 0 "
            "(clip while the iteration is below it; 0 clips for the whole run)"
        )


@dataclass(frozen=True)
class GradientClipping:
    """What to clip and until when.

    Args:
        clip_type: "value", "norm" (each parameter's gradient on its own, as Detectron2) or
            "full_model" (the norm of all gradients together).
        clip_value: the largest value ("value") or norm ("norm", "full_model").
        norm_type: the p of the p-norm ("norm", "full_model").
        until_iter: clip while the iteration is below it (iterations ``0 .. until_iter - 1``);
            0 clips in every iteration.
    """

    clip_type: str
    clip_value: float
    norm_type: float = 2.0
    until_iter: int = 0

    def __post_init__(self) -> None:
        _check_clipping(vars(self), key=lambda field: field)

    def is_active(self, iteration: int) -> bool:
        """Whether gradients are clipped in ``iteration`` (0-based, as Detectron2 counts)."""
        return self.until_iter == 0 or iteration < self.until_iter

    def clip(self, params: Iterable[torch.Tensor]) -> None:
        """Clip the gradients of ``params`` in place."""
        params = [p for p in params if p.grad is not None]
        if self.clip_type == "full_model":
            torch.nn.utils.clip_grad_norm_(params, self.clip_value, self.norm_type)
        elif self.clip_type == "norm":
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, self.clip_value, self.norm_type)
        else:
            for p in params:
                torch.nn.utils.clip_grad_value_(p, self.clip_value)

    def __call__(self, optimizer: torch.optim.Optimizer, args: Tuple, kwargs: Dict) -> None:
        """Step pre-hook: clip the optimizer's gradients if the current iteration asks for it
        (clipping for the whole run needs no iteration)."""
        if self.until_iter == 0 or self.is_active(_current_iteration(self.until_iter)):
            self.clip(p for group in optimizer.param_groups for p in group["params"])


def _current_iteration(until_iter: int) -> int:
    try:
        return get_event_storage().iter
    except AssertionError:  # Detectron2 asserts that an EventStorage is open
        raise RuntimeError(
            f"gradient clipping until iteration {until_iter} reads the iteration from Detectron2's "
            "EventStorage, but optimizer.step() ran outside one; train inside "
            "`with detectron2.utils.events.EventStorage(start_iter) as storage:` and set "
            "storage.iter each iteration (every Detectron2 trainer does), or use until_iter=0"
        ) from None


def gradient_clipping_from_config(cfg: CfgNode) -> Optional[GradientClipping]:
    """The clipping ``cfg.SOLVER.CLIP_GRADIENTS`` asks for, or None when it is not ENABLED.

    The keys are checked even when clipping is disabled, so that a typo does not go unnoticed.
    """
    node = cfg.SOLVER.CLIP_GRADIENTS
    # UNTIL_ITER is fishnet_d2's key (add_fishnet_config); without it, clip for the whole run.
    values = dict(
        clip_type=node.CLIP_TYPE,
        clip_value=node.CLIP_VALUE,
        norm_type=node.NORM_TYPE,
        until_iter=node.get("UNTIL_ITER", 0),
    )
    _check_clipping(values, key=lambda field: f"SOLVER.CLIP_GRADIENTS.{_CONFIG_KEYS[field]}")
    return GradientClipping(**values) if node.ENABLED else None


def add_gradient_clipping(optimizer: torch.optim.Optimizer, clipping: GradientClipping) -> RemovableHandle:
    """Clip ``optimizer``'s gradients before each ``step()`` as ``clipping`` says, in place.

    Returns the hook's handle (``handle.remove()`` turns clipping off).
    """
    if not isinstance(clipping, GradientClipping):
        raise ValueError(f"clipping={clipping!r}: must be a fishnet_d2.solver.GradientClipping")
    return optimizer.register_step_pre_hook(clipping)


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Drop-in for ``detectron2.solver.build_optimizer``: Detectron2's optimizer (SGD with its
    parameter groups), with ``SOLVER.CLIP_GRADIENTS`` applied by :func:`add_gradient_clipping`,
    which adds the clip type "full_model" and ``UNTIL_ITER`` to Detectron2's "value" and "norm"."""
    clipping = gradient_clipping_from_config(cfg)
    d2_cfg = cfg.clone()
    d2_cfg.defrost()
    d2_cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False  # clipping is added below, not by Detectron2
    optimizer = d2_build_optimizer(d2_cfg, model)
    if clipping is not None:
        add_gradient_clipping(optimizer, clipping)
    return optimizer


def build_clipped_optimizer(
    params: Union[Iterable[torch.Tensor], List[Dict[str, Any]]],
    *,
    optimizer: str = "SGD",
    clipping: Optional[GradientClipping] = None,
    **optimizer_kwargs: Any,
) -> torch.optim.Optimizer:
    """``torch.optim.<optimizer>(params, **optimizer_kwargs)`` with gradient clipping: the
    LazyConfig form of :func:`build_optimizer` (it takes ``params`` like ``torch.optim.SGD``, so
    ``tools/lazyconfig_train_net.py`` can set ``cfg.optimizer.params.model``)::

        optimizer = L(build_clipped_optimizer)(
            params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
            optimizer="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4,
            clipping=L(GradientClipping)(clip_type="full_model", clip_value=5.0, until_iter=14659),
        )

    Args:
        optimizer: the name of an optimizer class in ``torch.optim``.
        clipping: None for no clipping.
    """
    optimizer_type = getattr(torch.optim, optimizer, None) if isinstance(optimizer, str) else None
    if not (isinstance(optimizer_type, type) and issubclass(optimizer_type, torch.optim.Optimizer)):
        allowed = sorted(
            name
            for name, value in vars(torch.optim).items()
            if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value is not torch.optim.Optimizer
        )
        raise ValueError(f"optimizer={optimizer!r}: allowed names of torch.optim optimizers: {allowed}")
    built = optimizer_type(params, **optimizer_kwargs)
    if clipping is not None:
        add_gradient_clipping(built, clipping)
    return built
