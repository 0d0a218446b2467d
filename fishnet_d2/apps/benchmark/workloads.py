"""The steps the benchmark times, one set per model, with their inputs made once."""

import contextlib
from typing import Callable, ContextManager, Dict

import torch
from detectron2.utils.events import EventStorage
from torch import nn

from .models import ModelSpec, calibrate_detections, inference_input, training_batch

__all__ = ["KINDS", "AMP_DTYPES", "Workloads"]

# What is timed, in the order a round measures them.
KINDS = ("backbone_train", "train_iter", "inference")
# --amp's choices: the dtype of torch.autocast.
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class Workloads:
    """For one detector: its backbone's forward + backward, a training iteration and an
    inference, each a callable (``steps[kind]``) that ``prepare()`` readies before timing."""

    def __init__(self, spec: ModelSpec, model: nn.Module, args, device: str):
        self.spec = spec
        self.model = model
        self.backbone = model.backbone.bottom_up
        g = torch.Generator().manual_seed(1)
        height, width = args.size
        self.backbone_input = torch.randn(args.batch, 3, height, width, generator=g).to(device)
        height, width = args.det_size
        self.batch = training_batch(
            args.batch, height, width, instances=args.instances, seed=2, device=device
        )
        self.inference_input = inference_input(height, width, seed=3, device=device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        # lr 0: the iteration does all of SGD's work, and every repetition sees the same model.
        self.optimizer = torch.optim.SGD(trainable, lr=0.0, momentum=0.9, weight_decay=1e-4)
        # --amp: every step under autocast; float16 training scales its loss, as AMPTrainer does.
        amp = getattr(args, "amp", None)
        self.device_type = torch.device(device).type
        self.amp_dtype = AMP_DTYPES[amp] if amp else None
        self.scaler = torch.amp.GradScaler(self.device_type) if amp == "fp16" else None
        steps: Dict[str, Callable[[], None]] = {
            "backbone_train": self.backbone_train,
            "train_iter": self.train_iter,
        }
        if not spec.training_only:
            steps["inference"] = self.inference
        # What the run measures (its --kinds): the steps it times, in KINDS' order.
        self.steps = {kind: steps[kind] for kind in KINDS if kind in steps and kind in args.kinds}
        self.detections = None if "inference" not in self.steps else calibrate_detections(
            model.eval(), self.inference_input
        )

    def prepare(self, kind: str) -> None:
        """Untimed: the mode a step runs in, no gradients left over, the same random draws."""
        self.model.train(kind != "inference")
        self.model.zero_grad(set_to_none=True)
        torch.manual_seed(4)

    def autocast(self) -> ContextManager:
        """``torch.autocast`` with --amp's dtype; nothing without it."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def backbone_train(self) -> None:
        with self.autocast():
            outputs = self.backbone(self.backbone_input)
            loss = sum(o.float().sum() for o in outputs.values())
        loss.backward()

    def train_iter(self) -> None:
        with EventStorage(), self.autocast():  # EventStorage: where Detectron2's models log statistics
            loss = sum(self.model(self.batch).values())
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:  # AMPTrainer's step
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def inference(self) -> None:
        with torch.no_grad(), self.autocast():
            self.model(self.inference_input)
