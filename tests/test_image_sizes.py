"""Any image size through a FishNet Mask R-CNN FPN (Detectron2 pads to size_divisibility=32):
tiny and very elongated images give detections inside the image. The backbone itself refuses
sizes it cannot take, with its ValueError."""

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fishnet_d2 import FishNet

from .support import TINY_ARCH, fishnet_cfg, tiny_mask_rcnn_cfg, use_tiny_arch

MAX_PIXELS = 2**15  # keeps each inference small: the long side goes to 1024 only on thin images
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def image_sizes(draw):
    """(height, width): the long side in [1, 1024], the short side as long as MAX_PIXELS allows."""
    long_side = draw(st.integers(1, 1024))
    short_side = draw(st.integers(1, max(1, min(long_side, MAX_PIXELS // long_side))))
    return (long_side, short_side) if draw(st.booleans()) else (short_side, long_side)


@pytest.fixture(scope="module")
def detector():
    cfg = tiny_mask_rcnn_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # detections to check, even from random weights
    torch.manual_seed(0)
    return build_model(cfg).eval()


# Hypothesis repeats some sizes (it favours small and boundary values); 300 examples give more
# than 200 distinct sizes (derandomized: the same ones on every run).
@pytest.mark.slow
@settings(max_examples=300, **SETTINGS)
@given(size=image_sizes())
@example(size=(1, 1))
@example(size=(17, 900))
@example(size=(900, 17))
@example(size=(1, 1024))
@example(size=(1024, 1))
@example(size=(29, 64))
@example(size=(31, 33))
@example(size=(32, 32))
@example(size=(64, 64))
@example(size=(2, 3))
def test_inference_on_any_image_size(detector, size):
    height, width = size
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(height * 1025 + width)) * 255
    with torch.no_grad():
        (output,) = detector([{"image": image, "height": height, "width": width}])
    instances = output["instances"]
    assert instances.image_size == (height, width)
    assert len(instances) <= 10  # DETECTIONS_PER_IMAGE
    # From random weights with no score threshold, every image of at least 64x64 pixels has
    # proposals that survive clipping; smaller ones may legitimately have none (29x64 has none on
    # detectron2 main), so only these are required to give detections.
    if min(height, width) >= 64:
        assert len(instances) >= 1
    boxes = instances.pred_boxes.tensor
    assert torch.isfinite(boxes).all() and torch.isfinite(instances.scores).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all(), boxes
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all(), boxes
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all(), boxes
    assert instances.pred_masks.shape == (len(instances), height, width)
    assert ((instances.pred_classes >= 0) & (instances.pred_classes < 4)).all()


@pytest.fixture(scope="module")
def backbones():
    fpn_cfg = use_tiny_arch(fishnet_cfg())
    fpn_cfg.MODEL.BACKBONE.NAME = "build_fishnet_fpn_backbone"
    fpn_cfg.MODEL.FPN.IN_FEATURES = ["head2", "head3", "head4", "head5"]
    return {"FishNet": FishNet(TINY_ARCH).eval(), "FishNet-FPN": build_backbone(fpn_cfg).eval()}


@st.composite
def bad_sizes(draw):
    """(height, width) with at least one of them not a multiple of 32."""
    height, width = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    if height % 32 == 0 and width % 32 == 0:
        height += draw(st.integers(1, 31))
    return height, width


@settings(max_examples=100, **SETTINGS)
@given(size=bad_sizes(), which=st.sampled_from(["FishNet", "FishNet-FPN"]))
def test_backbone_refuses_sizes_not_multiple_of_32(backbones, size, which):
    height, width = size
    with pytest.raises(ValueError, match=rf"multiples of 32 \(size_divisibility\); got {height}x{width}\. Pad"):
        backbones[which](torch.zeros(1, 3, height, width))


@settings(max_examples=50, **SETTINGS)
@given(channels=st.integers(1, 8).filter(lambda c: c != 3), dims=st.sampled_from([2, 3, 4, 5]))
def test_backbone_refuses_other_shapes(backbones, channels, dims):
    shape = [2, channels, 32, 64][4 - dims :] if dims <= 4 else [1, 2, channels, 32, 64]
    with pytest.raises(ValueError, match=r"FishNet takes images of shape \(N, 3, H, W\); got \["):
        backbones["FishNet"](torch.zeros(shape))


@settings(max_examples=25, **SETTINGS)
@given(height=st.integers(1, 8), width=st.integers(1, 8))
def test_backbone_output_strides_on_good_sizes(backbones, height, width):
    x = torch.rand(1, 3, 32 * height, 32 * width)
    with torch.no_grad():
        features = backbones["FishNet-FPN"](x)
    for name, shape in backbones["FishNet-FPN"].output_shape().items():
        expected = (-(-32 * height // shape.stride), -(-32 * width // shape.stride))
        assert features[name].shape[-2:] == expected, (name, features[name].shape)
