"""Export: the FishNet backbone and its FPN trace (and script) to TorchScript with the outputs of
eager mode; the whole FishNet Mask R-CNN traces through Detectron2's TracingAdapter with the
detections of eager mode on the demo images; the backbones export to ONNX models that
onnx.checker accepts and onnxruntime runs with eager mode's outputs."""

import io
from itertools import islice

import onnx
import onnxruntime
import pytest
import torch
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.modeling import build_backbone, build_model
from PIL import Image

from fishnet_d2 import FishNet
from fishnet_d2.backports import detectron2_export_modules
from fishnet_d2.apps.data import DEMO_SPEC, render_split

from .support import ALL_FEATURES, TINY_ARCH, fishnet_cfg, tiny_mask_rcnn_cfg, use_tiny_arch

# torch 2.14 deprecates TorchScript (which Detectron2's export tools are built on) and its ONNX
# exporter; these tests check that the deprecated paths still work.
pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]



def fpn_backbone():
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_fishnet_fpn_backbone"
    cfg.MODEL.FISHNET.NORM = "BN"
    cfg.MODEL.FPN.IN_FEATURES = ["head2", "head3", "head4", "head5"]
    torch.manual_seed(0)
    return build_backbone(cfg).eval()


def fishnet(norm: str):
    torch.manual_seed(0)
    return FishNet(TINY_ARCH, norm=norm, num_classes=4, out_features=ALL_FEATURES + ["linear"]).eval()


def randomize_batchnorm(model):
    """Non-trivial BatchNorm statistics, so that eval-mode normalization is exercised."""
    generator = torch.Generator().manual_seed(1)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
        elif name.endswith("running_var"):
            buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model


def assert_same_outputs(actual, expected):
    """Equal up to float rounding (FrozenBatchNorm2d's traced arithmetic rounds differently)."""
    assert list(actual) == list(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def trace(model, x):
    """``torch.jit.trace`` of a module that returns a dict. check_trace=False: the tracer's own
    check retraces and compares the graphs, which differ in the mangled names of module types
    already compiled in this process; the tests compare the outputs instead, on several inputs."""
    return torch.jit.trace(model, x, strict=False, check_trace=False)


def save_and_load(module):
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


# Tracing FishNet records its input-size check with constants (a TracerWarning says so).
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_fishnet_traced_equals_eager(norm):
    model = randomize_batchnorm(fishnet(norm))
    traced = save_and_load(trace(model, torch.rand(1, 3, 64, 96)))
    for shape in [(1, 3, 64, 96), (2, 3, 96, 64), (1, 3, 32, 160)]:
        x = torch.rand(shape)
        with torch.no_grad():
            assert_same_outputs(traced(x), model(x))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_fpn_backbone_scripted_and_traced_equal_eager():
    detectron2_export_modules()  # applies Detectron2's TorchScript patches: how it scripts its FPN
    model = randomize_batchnorm(fpn_backbone())
    scripted = save_and_load(torch.jit.script(model))
    traced = save_and_load(trace(model, torch.rand(1, 3, 64, 96)))
    for shape in [(1, 3, 64, 96), (2, 3, 96, 64)]:
        x = torch.rand(shape)
        with torch.no_grad():
            eager = model(x)
            assert_same_outputs(scripted(x), eager)
            assert_same_outputs(traced(x), eager)


def demo_images(count: int):
    """The first validation images of the demo dataset (configs/Demo), as BGR CHW tensors."""
    images = []
    for _, png, _, _ in islice(render_split(DEMO_SPEC, "val"), count):
        bgr = convert_PIL_to_numpy(Image.open(io.BytesIO(png)), "BGR")
        images.append(torch.as_tensor(bgr.copy()).permute(2, 0, 1).float())
    return images


def inference(model, inputs):
    """The detector's output before rescaling (what Detectron2's export tools trace)."""
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_mask_rcnn_traced_with_tracing_adapter_equals_eager():
    cfg = tiny_mask_rcnn_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # detections to compare, even from random weights
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(cfg)).eval()
    images = demo_images(3)
    assert all(image.shape == (3, 128, 128) for image in images)
    adapter = detectron2_export_modules()[0].TracingAdapter(model, [{"image": images[0]}], inference)
    traced = save_and_load(torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False))
    # The demo images, and an image of another size than the one traced.
    for image in images + [torch.rand(3, 96, 160, generator=torch.Generator().manual_seed(2)) * 255]:
        with torch.no_grad():
            exported = adapter.outputs_schema(traced(image))[0]["instances"]
            eager = inference(model, [{"image": image}])[0]["instances"]
        assert len(eager) == 10 and len(exported) == len(eager)
        assert tuple(int(s) for s in exported.image_size) == tuple(image.shape[1:])
        torch.testing.assert_close(exported.pred_boxes.tensor, eager.pred_boxes.tensor, rtol=0, atol=0)
        torch.testing.assert_close(exported.scores, eager.scores, rtol=0, atol=0)
        assert torch.equal(exported.pred_classes, eager.pred_classes)
        torch.testing.assert_close(exported.pred_masks, eager.pred_masks, rtol=0, atol=0)


# torch 2.14's default ONNX exporter (dynamo=True) needs onnxscript, which the project does not
# install; the TorchScript-based exporter (dynamo=False) is deprecated but works.
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("which", ["FishNet", "FishNet-FPN"])
def test_backbone_exports_to_onnx(which):
    model = randomize_batchnorm(fishnet("BN") if which == "FishNet" else fpn_backbone())
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        eager = model(x)
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (x,), buffer, dynamo=False, opset_version=17, input_names=["image"], output_names=list(eager)
    )
    exported = onnx.load_model_from_string(buffer.getvalue())
    onnx.checker.check_model(exported, full_check=True)  # full_check: with shape inference
    inferred = onnx.shape_inference.infer_shapes(exported, strict_mode=True)
    shapes = {
        output.name: tuple(d.dim_value for d in output.type.tensor_type.shape.dim) for output in inferred.graph.output
    }
    assert shapes == {name: tuple(value.shape) for name, value in eager.items()}
    assert [i.name for i in inferred.graph.input] == ["image"]
    # As deployments run it: onnxruntime gives eager mode's features.
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": x.numpy()})))
    assert_same_outputs({name: torch.as_tensor(outputs[name]) for name in eager}, eager)
