"""fishnet_d2.solver: SOLVER.CLIP_GRADIENTS with "full_model" and UNTIL_ITER."""

import itertools

import pytest
import torch
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.utils.events import EventStorage

from fishnet_d2.solver import (
    CLIP_TYPES,
    GradientClipping,
    add_gradient_clipping,
    build_clipped_optimizer,
    build_optimizer,
    gradient_clipping_from_config,
)

from .support import fishnet_cfg

# Gradients of two parameters with norms 3 and 4: together, norm 5.
GRADS = (torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0, 0.0]))


class TwoParams(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.bias = torch.nn.Parameter(torch.ones(3))


def clip_cfg(clip_type="full_model", clip_value=2.0, until_iter=0, enabled=True):
    cfg = fishnet_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = enabled
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    cfg.SOLVER.CLIP_GRADIENTS.UNTIL_ITER = until_iter
    return cfg


def grads_after_step(optimizer, model, iteration):
    """Set GRADS, run optimizer.step() at ``iteration``, return the gradients it left."""
    for p, g in zip(model.parameters(), GRADS):
        p.grad = g.clone()
    with EventStorage(iteration):
        optimizer.step()
    return [p.grad.clone() for p in model.parameters()]


def total_norm(grads):
    return torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()


@pytest.mark.parametrize("clip_type", CLIP_TYPES)
def test_clipping_stops_at_until_iter(clip_type):
    model = TwoParams()
    optimizer = build_optimizer(clip_cfg(clip_type, clip_value=2.0, until_iter=3), model)
    unclipped = [g.clone() for g in GRADS]
    for iteration in (0, 2):
        grads = grads_after_step(optimizer, model, iteration)
        assert not all(torch.equal(g, u) for g, u in zip(grads, unclipped)), iteration
    for iteration in (3, 4, 1000):
        grads = grads_after_step(optimizer, model, iteration)
        assert all(torch.equal(g, u) for g, u in zip(grads, unclipped)), iteration


def test_until_iter_zero_clips_every_iteration():
    model = TwoParams()
    optimizer = build_optimizer(clip_cfg("full_model", clip_value=2.0, until_iter=0), model)
    for iteration in (0, 100000):
        assert total_norm(grads_after_step(optimizer, model, iteration)) == pytest.approx(2.0)


def test_full_model_differs_from_per_parameter_norm():
    model = TwoParams()
    full = grads_after_step(build_optimizer(clip_cfg("full_model", 2.0), model), model, 0)
    # all gradients scaled together by 2 / 5: each keeps its share of the norm
    assert [g.norm().item() for g in full] == pytest.approx([1.2, 1.6])
    assert total_norm(full) == pytest.approx(2.0)

    model = TwoParams()
    per_param = grads_after_step(build_optimizer(clip_cfg("norm", 2.0), model), model, 0)
    # each gradient clipped to norm 2 on its own: together more than 2
    assert [g.norm().item() for g in per_param] == pytest.approx([2.0, 2.0])
    assert total_norm(per_param) == pytest.approx(8**0.5)


def test_value_clips_each_element():
    model = TwoParams()
    grads = grads_after_step(build_optimizer(clip_cfg("value", 1.5), model), model, 0)
    assert torch.equal(grads[0], torch.tensor([1.5, 0.0]))
    assert torch.equal(grads[1], torch.tensor([0.0, 1.5, 0.0]))


def test_disabled_clipping_leaves_gradients():
    model = TwoParams()
    grads = grads_after_step(build_optimizer(clip_cfg(enabled=False), model), model, 0)
    assert all(torch.equal(g, u) for g, u in zip(grads, GRADS))


class RecordGradNorm(HookBase):
    """The norm of all gradients after each optimizer step (clipping leaves them clipped)."""

    def __init__(self):
        self.norms = []

    def after_step(self):
        self.norms.append(total_norm([p.grad for p in self.trainer.model.parameters()]))


def test_clipping_follows_the_trainers_iteration():
    """With Detectron2's own training loop (and a resumed start iteration), clipping reads the
    iteration the trainer runs: clipped in iterations 5 and 6, not from UNTIL_ITER = 7 on."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)

    class Loss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, batch):
            return {"loss": 100.0 * self.model(batch).pow(2).sum()}

    wrapped = Loss()
    optimizer = build_optimizer(clip_cfg("full_model", clip_value=0.5, until_iter=7), wrapped)
    trainer = SimpleTrainer(wrapped, itertools.repeat(torch.randn(16, 8)), optimizer)
    record = RecordGradNorm()
    trainer.register_hooks([record])
    trainer.train(5, 9)
    assert record.norms[:2] == pytest.approx([0.5, 0.5])
    assert all(norm > 1.0 for norm in record.norms[2:])


def test_build_optimizer_is_detectron2s_optimizer():
    """Same type and parameter groups as detectron2.solver.build_optimizer."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    cfg = clip_cfg("value", until_iter=5)
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    ours = build_optimizer(cfg, model)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    theirs = d2_build_optimizer(cfg, model)
    assert type(ours) is type(theirs)

    def groups(optimizer):
        return [
            ({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]])
            for g in optimizer.param_groups
        ]

    assert groups(ours) == groups(theirs)
    assert len({g["lr"] for g in ours.param_groups}) == 2  # biases at twice the LR


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("CLIP_TYPE", "full", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE='full': allowed 'value', 'norm', 'full_model'"),
        ("CLIP_VALUE", 0.0, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE=0.0"),
        ("NORM_TYPE", -1.0, "SOLVER.CLIP_GRADIENTS.NORM_TYPE=-1.0"),
        ("UNTIL_ITER", -1, "SOLVER.CLIP_GRADIENTS.UNTIL_ITER=-1"),
    ],
)
def test_bad_clip_config_raises(key, value, message):
    cfg = clip_cfg()
    cfg.SOLVER.CLIP_GRADIENTS[key] = value
    with pytest.raises(ValueError) as error:
        build_optimizer(cfg, TwoParams())
    assert message in str(error.value)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False  # a typo is reported even when clipping is off
    with pytest.raises(ValueError):
        gradient_clipping_from_config(cfg)


def test_bad_clip_type_names_the_argument():
    with pytest.raises(ValueError, match=r"clip_type='full': allowed 'value', 'norm', 'full_model'"):
        GradientClipping("full", 1.0)


def test_clipping_until_an_iteration_needs_the_event_storage():
    model = TwoParams()
    optimizer = build_optimizer(clip_cfg(until_iter=3), model)
    for p, g in zip(model.parameters(), GRADS):
        p.grad = g.clone()
    with pytest.raises(RuntimeError, match="EventStorage"):
        optimizer.step()
    optimizer = build_optimizer(clip_cfg(until_iter=0), model)
    optimizer.step()  # clipping for the whole run needs no iteration
    assert total_norm([p.grad for p in model.parameters()]) == pytest.approx(2.0)


def test_build_clipped_optimizer():
    model = TwoParams()
    clipping = GradientClipping("full_model", 2.0, until_iter=1)
    optimizer = build_clipped_optimizer(model.parameters(), optimizer="AdamW", lr=0.1, clipping=clipping)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert total_norm(grads_after_step(optimizer, model, 0)) == pytest.approx(2.0)
    assert total_norm(grads_after_step(optimizer, model, 1)) == pytest.approx(5.0)
    with pytest.raises(ValueError, match=r"optimizer='Sgd': allowed names of torch.optim optimizers: \[.*'SGD'"):
        build_clipped_optimizer(model.parameters(), optimizer="Sgd", lr=0.1)


def test_add_gradient_clipping_returns_a_removable_handle():
    model = TwoParams()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    handle = add_gradient_clipping(optimizer, GradientClipping("full_model", 2.0))
    assert total_norm(grads_after_step(optimizer, model, 0)) == pytest.approx(2.0)
    handle.remove()
    assert total_norm(grads_after_step(optimizer, model, 0)) == pytest.approx(5.0)
