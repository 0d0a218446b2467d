"""FishNet through the libraries that build their backbones with timm: Hugging Face Transformers'
TimmBackbone, segmentation_models_pytorch's ``tu-`` encoders, and torch.hub (hubconf.py), each
at the version tools/constraints.txt pins. The official tiny network (tests/data) stands in for
the full-size ones, which docs/timm.md's examples run (tests/test_timm_docs.py)."""

import pytest
import torch

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
smp = pytest.importorskip("segmentation_models_pytorch")

import fishnet_d2.timm_models  # noqa: E402,F401  registers the models
from fishnet_d2.timm_models import TimmFishNet  # noqa: E402
from fishnet_d2.weights.official_layout import infer_arch  # noqa: E402

from .support import GOLDEN_STAGES, GOLDEN_TOLERANCE, REPO, TINY_ARCH, relative_error  # noqa: E402


@pytest.fixture(scope="module")
def golden_file(golden, tmp_path_factory):
    """The official tiny network's checkpoint, as the official code saves it, and its architecture."""
    path = tmp_path_factory.mktemp("consumers") / "fishnet_tiny_ckpt.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in golden["state_dict"].items()}}, path)
    return str(path), infer_arch(golden["state_dict"])[0]


def test_transformers_timm_backbone_returns_the_official_features(golden, golden_file):
    """TimmBackbone(TimmBackboneConfig(backbone="fishnet150", ...)): the head's features with
    their channels, the official model's values. freeze_batch_norm_2d=True, as the detection
    models' configs set it: transformers' TimmBackbone resets the BatchNorm statistics of every
    pretrained timm backbone (resnet50's too) when it initializes, unless they are frozen."""
    path, arch = golden_file
    config = transformers.TimmBackboneConfig(backbone="fishnet150", out_indices=[1, 2, 3], freeze_batch_norm_2d=True)
    backbone = transformers.TimmBackbone(config, pretrained=True, arch=arch, pretrained_cfg_overlay=dict(file=path))
    assert backbone.channels == [208, 400, 528]
    assert backbone.out_features == ["fishnet.head.0", "fishnet.head.1", "fishnet.head.2"]
    backbone.double().eval()
    with torch.no_grad():
        maps = backbone(golden["input"].double()).feature_maps
    for name, feature in zip(["head3", "head4", "head5"], maps):
        expected = golden["stage_outputs"][GOLDEN_STAGES.index(name)]
        assert relative_error(feature, expected) < GOLDEN_TOLERANCE, name
    # Unfrozen, for fine-tuning: every pretrained parameter is there, the default output is head5.
    plain = transformers.TimmBackbone(transformers.TimmBackboneConfig(backbone="fishnet150"), pretrained=True, arch=arch,
                                      pretrained_cfg_overlay=dict(file=path))  # fmt: skip
    frozen = dict(backbone.named_parameters())
    for name, value in plain.named_parameters():
        assert torch.equal(value, frozen[name].float()) if name in frozen else "norm" in name, name
    assert plain.channels == [528] and plain(torch.rand(1, 3, 64, 64)).feature_maps[0].shape == (1, 528, 2, 2)


def test_segmentation_models_pytorch_unet_trains_a_step():
    """smp.Unet("tu-fishnet150"): the head's four features (strides 4 to 32) as a pyramid that
    starts at stride 4, as smp reads ConvNeXt's and Swin's."""
    torch.manual_seed(0)
    model = smp.Unet("tu-fishnet150", encoder_weights=None, classes=3, arch=TINY_ARCH)
    assert model.encoder.out_channels == [3, 0, 48, 112, 208, 272]
    x, target = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.encoder.model.model.fishnet.stem.conv1.conv.weight.clone()
    losses = []
    for _ in range(2):
        optimizer.zero_grad()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert logits.shape == (2, 3, 64, 64) and losses[1] < losses[0]
    assert not torch.equal(model.encoder.model.model.fishnet.stem.conv1.conv.weight, before)


def test_torch_hub_loads_the_entry_points_from_the_repository():
    model = torch.hub.load(str(REPO), "fishnet150", source="local", arch=TINY_ARCH, num_classes=3)
    assert isinstance(model, TimmFishNet) and model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(RuntimeError, match="Cannot find callable fishnet151 in hubconf"):  # torch.hub's own
        torch.hub.load(str(REPO), "fishnet151", source="local")
