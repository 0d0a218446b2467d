"""torch.export of FishNet detectors (``tools/export_model.py --export-method export``): tiny FishNet
Mask R-CNN, Faster R-CNN and RetinaNet with random weights exported with dynamic image height and
width to an ExportedProgram, an AOTInductor package and ONNX (the dynamo exporter); each gives
eager mode's detections on an image of another size than the one it was exported with, here and
in a new Python process that imports neither fishnet_d2 nor Detectron2 (the tool checks both; the
tests read its report and run the files once more themselves). FishNet alone exports when the
padded image size is decided by the data, as Detectron2's padding makes it.

Slow: an export takes 10-30 s, an AOTInductor compile 2-3 minutes on two cores.
"""

import json
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from fishnet_d2.apps.export import FILE_NAMES, exported_program, main, size_range
from fishnet_d2.apps.export.exportable import exportable_detector
from fishnet_d2.apps.predict import load_config, load_model

from .support import export_cfg, tiny_mask_rcnn_cfg, write_model

pytestmark = pytest.mark.slow

FIELDS = {
    "mask_rcnn": ["pred_boxes", "scores", "pred_classes", "pred_masks"],
    "faster_rcnn": ["pred_boxes", "scores", "pred_classes"],
    "retinanet": ["pred_boxes", "scores", "pred_classes"],
}

# Runs a file the way export_info.json's "load" says, in a process that must not import
# fishnet_d2 or detectron2: FILE IMAGE OUTPUTS FORMAT.
RUN_FILE = """\
import sys
import torch, torchvision
model_file, image_file, outputs_file, format = sys.argv[1:5]
image = torch.load(image_file)
if format == "program":
    outputs = torch.export.load(model_file).module()(image)
elif format == "aoti":
    outputs = torch._inductor.aoti_load_package(model_file)(image)
else:
    import onnxruntime
    session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    outputs = [torch.as_tensor(o) for o in session.run(None, {"image": image.numpy()})]
assert not [m for m in sys.modules if m.split(".")[0] in ("fishnet_d2", "detectron2")]
torch.save([o.detach() for o in outputs], outputs_file)
"""


def export(tmp_path, architecture: str, format: str):
    config = write_model(export_cfg(architecture), tmp_path / "model")
    status = main(
        ["--config-file", str(config), "--export-method", "export", "--format", format, "--output", str(tmp_path / "out"),
         "MODEL.WEIGHTS", str(tmp_path / "model" / "model.pth")]
    )  # fmt: skip
    assert status == 0
    return config, json.loads((tmp_path / "out" / "export_info.json").read_text())


@pytest.mark.parametrize(
    "architecture, format",
    # Each architecture and each format, not every pair (an AOTInductor compile takes minutes).
    [("faster_rcnn", "program"), ("retinanet", "program"), ("mask_rcnn", "onnx"), ("mask_rcnn", "aoti")],
)
def test_torch_export_gives_eager_detections_at_other_sizes_without_fishnet_d2(tmp_path, architecture, format):
    config, info = export(tmp_path, architecture, format)
    assert (info["export_method"], info["format"], info["file"]) == ("export", format, FILE_NAMES[format])
    assert info["outputs"] == FIELDS[architecture]
    check = info["check"]
    # Two sample images of different sizes (the second is the first's left three quarters): the
    # second is not the one exported with.
    assert len(check["images"]) == 2
    assert check["passed"] and check["max_relative_difference"] < 1e-3
    assert check["fresh_process_max_relative_difference"] < 1e-3
    assert all(d["exported"] == d["eager"] == d["paired"] for d in check["detections"])
    assert "H from" in info["input"] and info["export_seconds"] > 0
    assert info["file_bytes"] == (tmp_path / "out" / info["file"]).stat().st_size

    # Once more, by hand: an image of a size neither sample has, in a bare process.
    image = torch.rand(3, 140, 170, generator=torch.Generator().manual_seed(5)) * 255
    torch.save(image, tmp_path / "image.pt")
    process = subprocess.run(
        [sys.executable, "-c", RUN_FILE, str(tmp_path / "out" / info["file"]), str(tmp_path / "image.pt"),
         str(tmp_path / "outputs.pt"), format],
        capture_output=True, text=True,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    outputs = dict(zip(info["outputs"], torch.load(tmp_path / "outputs.pt")))
    model = exportable_detector(load_model(load_config(str(config))))
    with torch.no_grad():
        expected = dict(zip(model.output_names, model(image)))
    assert len(expected["scores"]) > 0
    for name, value in expected.items():
        assert outputs[name].shape == value.shape, name
        # The exported program computes in NCHW, the eager model in channels-last: rounding.
        scale = max(float(value.abs().max()), 1.0)
        assert float((outputs[name].float() - value.float()).abs().max()) <= 1e-3 * scale, name


def test_exported_programs_accept_the_sizes_they_report(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_mask_rcnn_cfg()).eval()
    program, names = exported_program(model, torch.rand(3, 96, 128) * 255)
    sizes = size_range(program)
    # The coarsest map (P6, stride 64) must be at least 2 pixels: sizes from 65.
    assert sizes == {"height": (65, None), "width": (65, None)}
    runner = program.module()
    smallest = torch.rand(3, 65, 65) * 255
    with torch.no_grad():
        assert [t.shape[1:] for t in runner(smallest)] == [torch.Size([4]), (), (), (1, 28, 28)]
    with pytest.raises(AssertionError, match=">= 65"):  # the program's own guard
        runner(torch.rand(3, 64, 100) * 255)


class CropToPaddedSize(torch.nn.Module):
    """FishNet's FPN on an image cropped to a size given as a tensor: under torch.export the
    size is decided by the data, as Detectron2's ImageList.from_tensors makes the padded size."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor, size: torch.Tensor):
        height, width = size.tolist()
        torch._check(height >= 64)
        torch._check(width >= 64)
        torch._check(height <= image.shape[-2])
        torch._check(width <= image.shape[-1])
        return self.backbone(image[..., :height, :width])


def test_fishnet_exports_when_the_padded_size_depends_on_the_data():
    cfg = tiny_mask_rcnn_cfg()
    cfg.MODEL.FISHNET.CHANNELS_LAST = False  # see fishnet_d2.apps.export.programs
    torch.manual_seed(0)
    module = CropToPaddedSize(build_model(cfg).backbone.eval()).eval()
    image = torch.rand(1, 3, 320, 320)
    program = torch.export.export(module, (image, torch.tensor([96, 128])), strict=False)
    with torch.no_grad():
        for size in ([160, 64], [320, 288]):
            expected = module(image, torch.tensor(size))
            outputs = program.module()(image, torch.tensor(size))
            assert all(torch.equal(outputs[k], expected[k]) for k in expected)
    # FishNet's own check stays in the program: a size that is not a multiple of 32 is refused.
    with pytest.raises(RuntimeError, match="Mod"):
        program.module()(image, torch.tensor([150, 64]))
    with pytest.raises(ValueError, match="multiples of 32"):
        module(image, torch.tensor([150, 64]))
