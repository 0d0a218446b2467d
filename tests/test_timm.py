"""FishNet in timm (fishnet_d2.timm_models): the registered names and tags, the official model's
outputs through timm's loading, timm's model interface, features_only, the errors. Most tests use
the official code's tiny reference network (tests/data/tiny_golden.pt, through ``arch=``); the
published weights by name, on the full-size networks, are the slow ones at the end."""

import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

timm = pytest.importorskip("timm")  # the extra fishnet-d2[timm]; CI installs it

import timm.data  # noqa: E402

import fishnet_d2.timm_models  # noqa: E402,F401  registers the models
from fishnet_d2 import FISHNET_VARIANTS, FishNet, FishNetArch  # noqa: E402
from fishnet_d2.modeling.optimize.folding import FoldedPreActBottleneck  # noqa: E402
from fishnet_d2.timm_models import TimmFishNet, fishnet_d2_key, timm_key  # noqa: E402
from fishnet_d2.weights.convert import convert_state_dict, save_d2_checkpoint  # noqa: E402
from fishnet_d2.weights.download import UnpublishedWeightsError, WeightsUnavailableError  # noqa: E402
from fishnet_d2.weights.files import CheckpointLoadError  # noqa: E402
from fishnet_d2.weights.official_layout import infer_arch  # noqa: E402
from fishnet_d2.weights.zoo import PUBLISHED_WEIGHTS, SCHEME  # noqa: E402

from .support import GOLDEN_STAGES, GOLDEN_TOLERANCE, REPO, TINY_ARCH, relative_error  # noqa: E402
from .weights_mirror import pytorchcv_state_dict  # noqa: E402

TAGS = [
    "fishnet99.official_in1k",
    "fishnet150.official_in1k",
    "fishnet150.official_welltrained_in1k",
    "fishnet150.pytorchcv_in1k",
    "fishnet201.official_welltrained_in1k",
]
HEAD = ["head2", "head3", "head4", "head5"]
ALL_BY_STRIDE = ["stem", "body2", "head2", "tail3", "body3", "head3", "tail4", "body4", "head4", "tail5", "bridge", "head5"]


@pytest.fixture(scope="module")
def golden_files(golden, tmp_path_factory) -> Tuple[FishNetArch, int, Dict[str, Path]]:
    """The official tiny network's architecture, classes, and its weights as files: the official
    checkpoint as the official code saves it, and this project's converted .pkl."""
    root = tmp_path_factory.mktemp("timm_golden")
    arch, num_classes = infer_arch(golden["state_dict"])
    official = root / "fishnet_tiny_ckpt.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in golden["state_dict"].items()}, "best_prec1": 70.0}, official)
    converted = root / "fishnet_tiny.pkl"
    save_d2_checkpoint(convert_state_dict(golden["state_dict"]).state_dict, str(converted), "test")
    return arch, num_classes, {"official": official, "fishnet_d2": converted}


def tiny(**kwargs) -> TimmFishNet:
    return timm.create_model("fishnet150", arch=TINY_ARCH, **kwargs)


def assert_golden(outputs: Dict[str, torch.Tensor], golden) -> None:
    for name, expected in zip(GOLDEN_STAGES, golden["stage_outputs"]):
        if name in outputs:
            assert relative_error(outputs[name], expected) < GOLDEN_TOLERANCE, name
    assert relative_error(outputs["logits"], golden["logits"]) < GOLDEN_TOLERANCE


# ---- names, tags, pretrained_cfg ----


def test_the_names_and_a_tag_per_published_file_are_registered():
    assert timm.list_models("fish*") == ["fishnet99", "fishnet150", "fishnet201", "fishnext150"]
    assert sorted(timm.list_models("fishnet*", pretrained=True)) == sorted(TAGS)
    assert len(TAGS) == len(PUBLISHED_WEIGHTS)
    for tag in TAGS:
        cfg = timm.models.get_pretrained_cfg(tag)
        name = cfg.url[len(SCHEME) :]
        assert cfg.url.startswith(SCHEME) and PUBLISHED_WEIGHTS[name].depth == int(tag.split(".")[0][len("fishnet") :])
        assert cfg.origin_url == PUBLISHED_WEIGHTS[name].url
    # The default tag is the official code's (the project's configs start from it), FishNeXt has none.
    assert timm.models.get_pretrained_cfg("fishnet150").tag == "official_in1k"
    assert not timm.models.get_pretrained_cfg("fishnext150").has_weights


def test_pretrained_cfg_is_the_official_evaluation():
    """Resize the shorter side to 256 (bilinear), the center 224x224, ImageNet's mean and std: what
    timm's own data pipeline builds from the pretrained_cfg."""
    model = tiny()
    cfg = model.pretrained_cfg
    assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"], cfg["crop_mode"]) == ((3, 224, 224), 0.875, "bilinear", "center")
    assert (cfg["mean"], cfg["std"]) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    resize, crop = transform.transforms[:2]
    assert (resize.size, resize.interpolation.value, crop.size) == (256, "bilinear", (224, 224))
    for key in ("first_conv", "classifier"):
        assert f"{cfg[key]}.weight" in model.state_dict()


# ---- the official model's outputs, through timm's loading ----


@pytest.mark.parametrize("layout", ["official", "fishnet_d2"])
def test_a_pretrained_file_gives_the_official_logits(golden, golden_files, layout):
    arch, num_classes, files = golden_files
    model = timm.create_model(
        "fishnet150", arch=arch, num_classes=num_classes, pretrained=True, pretrained_cfg_overlay=dict(file=str(files[layout]))
    )
    model.double().eval()
    with torch.no_grad():
        features, intermediates = model.forward_intermediates(golden["input"].double())
        outputs = dict(zip(HEAD, intermediates), logits=model.forward_head(features))
    assert_golden(outputs, golden)


def test_checkpoint_path_takes_the_official_file_and_the_models_own(golden, golden_files, tmp_path):
    arch, num_classes, files = golden_files
    model = timm.create_model("fishnet150", arch=arch, num_classes=num_classes, checkpoint_path=str(files["official"]))
    own = tmp_path / "timm_checkpoint.pth"
    torch.save({"state_dict": model.state_dict()}, own)  # as timm's train.py saves it
    again = timm.create_model("fishnet150", arch=arch, num_classes=num_classes, checkpoint_path=str(own))
    for m in (model, again):
        with torch.no_grad():
            assert_golden({"logits": m.double().eval()(golden["input"].double())}, golden)


def test_pretrained_weights_adapt_as_timm_does(golden_files):
    """timm's test_model_load_pretrained: in_chans=1 sums the first conv's channels; another
    number of classes keeps the model's classifier conv; num_classes=0 and features_only load."""
    arch, num_classes, files = golden_files
    file = dict(file=str(files["official"]))
    reference = timm.create_model("fishnet150", arch=arch, num_classes=num_classes, pretrained=True, pretrained_cfg_overlay=file)
    gray = timm.create_model("fishnet150", arch=arch, in_chans=1, num_classes=5, pretrained=True, pretrained_cfg_overlay=file)
    first = "fishnet.stem.conv1.conv.weight"
    torch.testing.assert_close(gray.state_dict()[first], reference.state_dict()[first].sum(1, keepdim=True))
    same = {k for k, v in gray.state_dict().items() if k != first and torch.equal(v, reference.state_dict()[k])}
    assert set(reference.state_dict()) - same == {first, "classifier.fc.weight", "classifier.fc.bias"}
    assert gray.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 5)
    pooled = timm.create_model("fishnet150", arch=arch, num_classes=0, pretrained=True, pretrained_cfg_overlay=file)
    assert pooled(torch.rand(1, 3, 64, 64)).shape == (1, pooled.head_hidden_size)
    features = timm.create_model("fishnet150", arch=arch, features_only=True, pretrained=True, pretrained_cfg_overlay=file)
    assert torch.equal(features.model.fishnet.stem.conv1.conv.weight, reference.fishnet.stem.conv1.conv.weight)


def test_the_same_network_and_weights_as_fishnet_d2():
    """One network: ``model.fishnet`` is fishnet_d2's FishNet; the state_dict is FishNet's with
    ``fishnet.`` before the backbone's keys; FishNet's weights give FishNet's logits."""
    model = tiny(num_classes=10).double().eval()
    plain = FishNet(TINY_ARCH, norm="BN", num_classes=10).double().eval()
    assert isinstance(model.fishnet, FishNet)
    assert list(model.state_dict()) == [timm_key(k) for k in plain.state_dict() if not k.startswith("classifier.")] + [
        k for k in plain.state_dict() if k.startswith("classifier.")
    ]
    assert {fishnet_d2_key(k) for k in model.state_dict()} == set(plain.state_dict())
    model.load_state_dict(plain.state_dict())  # fishnet_d2's keys, converted
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x)["linear"], rtol=1e-12, atol=1e-12)
    back = FishNet(TINY_ARCH, norm="BN", num_classes=10).double()
    back.load_state_dict({fishnet_d2_key(k): v for k, v in model.state_dict().items()})
    # The speed paths are build_fishnet's: FrozenBN folded into the convolutions, channels-last.
    frozen = tiny(norm="FrozenBN")
    assert isinstance(frozen.fishnet.tail[0].blocks[0], FoldedPreActBottleneck)
    assert frozen.fishnet.stem.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)


# ---- timm's model interface ----


def test_classifier_interface_as_timm_tests_it():
    model = tiny().eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert model.forward_features(x).shape == (1, model.num_features, 3, 3) and model.num_features == 272
        assert model(x).shape == (1, 1000) and model.get_classifier().out_channels == 1000
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.head_hidden_size) and model.num_classes == 0
        model.reset_classifier(0, "")
        assert model(x).shape == (1, model.head_hidden_size, 3, 3)
        model.reset_classifier(7, "avg")
        assert model(x).shape == (1, 7) and model.get_classifier().out_channels == 7
        assert tiny(num_classes=0, global_pool="").eval()(x).shape == (1, 136, 3, 3)


def test_every_parameter_gets_a_gradient_and_torchscript_computes_the_same():
    model = tiny(num_classes=42, drop_rate=0.2).train()
    model(torch.rand(2, 3, 64, 64)).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    scripted = torch.jit.script(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = tiny(num_classes=5).double().train()
    checkpointed = tiny(num_classes=5).double().train()
    checkpointed.load_state_dict(model.state_dict())
    checkpointed.set_grad_checkpointing()
    assert checkpointed.grad_checkpointing and type(checkpointed.fishnet.stem).__name__ == "CheckpointedFishStem"
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    for m in (model, checkpointed):
        m(x).square().sum().backward()
    for (name, a), b in zip(model.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    with pytest.raises(ValueError, match="create the model without activation_checkpointing"):
        checkpointed.set_grad_checkpointing(False)


# ---- features ----


def test_features_only_gives_the_heads_four_by_default_and_any_feature_by_index():
    x = torch.rand(1, 3, 64, 96)
    model = tiny(features_only=True).eval()
    info = model.feature_info
    assert [i["name"] for i in info.get_dicts()] == HEAD and info.reduction() == [4, 8, 16, 32]
    assert info.channels() == [48, 112, 208, 272]
    assert info.module_name() == ["fishnet.head.0.refine", "fishnet.head.0", "fishnet.head.1", "fishnet.head.2"]
    everything = tiny(features_only=True, feature_location="all").eval()
    assert [i["name"] for i in everything.feature_info.info] == ALL_BY_STRIDE
    assert everything.feature_info.out_indices == (2, 5, 8, 11)
    picked = tiny(features_only=True, feature_location="all", out_indices=(0, 3, -2)).eval()
    for m in (model, picked):
        m.load_state_dict(everything.state_dict())
    reference = FishNet(TINY_ARCH, out_features=ALL_BY_STRIDE).eval()
    reference.load_state_dict({fishnet_d2_key(k[len("model.") :]): v for k, v in everything.state_dict().items()})
    with torch.no_grad():
        expected = reference(x)
        for m, names in ((model, HEAD), (everything, HEAD), (picked, ["stem", "tail3", "bridge"])):
            outputs = m(x)
            assert len(outputs) == len(names)
            for name, output in zip(names, outputs):
                torch.testing.assert_close(output, expected[name], rtol=1e-5, atol=1e-5, msg=name)
    for i in everything.feature_info.info:  # each feature's module is the model's
        assert everything.model.get_submodule(i["module"]) is not None


def test_forward_intermediates_as_timm_expects():
    model = tiny(feature_location="all").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(intermediates) == len(model.feature_info) == 12
        for info, feature in zip(model.feature_info, intermediates):
            assert feature.shape[1:] == (info["num_chs"], 64 // info["reduction"], 64 // info["reduction"])
        last = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape[1] for t in last] == [64, 272]  # bridge, head5


# ---- bad input ----


def test_bad_input_is_named_with_what_is_allowed(golden_files):
    arch, _, files = golden_files
    cases = [
        (lambda: timm.create_model("fishnet150.in22k"), RuntimeError, r"fishnet150\.in22k: no such pretrained tag; allowed: fishnet150\.official_in1k, fishnet150\.official_welltrained_in1k, fishnet150\.pytorchcv_in1k"),
        (lambda: tiny(features_only=True, out_indices=(4,)), ValueError, r"out_indices=\(4,\): 4 is not one of them; the features listed are 0: head2, 1: head3, 2: head4, 3: head5; allowed: indices 0 to 3 .*feature_location='all'"),
        (lambda: tiny(features_only=True, feature_location="all", out_indices=(12,)), ValueError, r"allowed: indices 0 to 11 \(or -12 to -1\)"),
        (lambda: tiny(feature_location="body"), ValueError, r"feature_location='body': allowed 'head' .* or 'all'"),
        (lambda: tiny(features_only=True, feature_cls="hook"), ValueError, r"feature_cls='hook': .*allowed: 'getter'"),
        (lambda: tiny(output_stride=16), ValueError, r"output_stride=16: .* allowed: 32"),
        (lambda: tiny(global_pool="max"), ValueError, r"global_pool='max': allowed 'avg' .* or ''"),
        (lambda: tiny(norm="XN"), ValueError, r"norm='XN': allowed FrozenBN, BN"),
        (lambda: timm.create_model("fishnext150", pretrained=True), UnpublishedWeightsError, r"fishnext150: no ImageNet weights .* published.*pretrained_cfg_overlay=dict\(file=PATH\)"),
        (lambda: timm.create_model("fishnet99", pretrained=True, pretrained_cfg_overlay=dict(file=str(files["official"]))), CheckpointLoadError,
         r"fishnet99: the weights in .*fishnet_tiny_ckpt\.tar are a custom FishNet's \(10 classes, official layout\), not FishNet-99's\. Allowed: weights of FishNet-99"),
        (lambda: tiny(checkpoint_path=str(files["official"])), CheckpointLoadError, r"are a custom FishNet's .* not a custom FishNet's"),
    ]  # fmt: skip
    for create, error, message in cases:
        with pytest.raises(error, match=message):
            create()
    # An unknown name is timm's own error (no plugin sees it); timm.list_models("fish*") lists them.
    with pytest.raises(RuntimeError, match=r"Unknown model \(fishnet151\)"):
        timm.create_model("fishnet151")


# ---- the core without timm; the named weights (full-size networks) ----


@pytest.mark.slow
def test_the_core_imports_no_timm_and_works_without_it():
    code = (
        "import sys; import fishnet_d2, fishnet_d2.weights.download, fishnet_d2.engine; "
        "assert 'timm' not in sys.modules, 'fishnet_d2 imported timm'; "
        "sys.modules['timm'] = None  # as if it were not installed\n"
        "try:\n    import fishnet_d2.timm_models\nexcept ImportError as e:\n    print(e)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pip install 'fishnet-d2[timm]'" in result.stdout


@pytest.mark.slow
def test_pretrained_true_fetches_the_named_weights_once(published_mirror, published, tmp_path):
    model = timm.create_model("fishnet99", pretrained=True).eval()
    assert published_mirror.requests == ["fishnet99_ckpt.tar"]
    assert model.pretrained_cfg["file"] == str(tmp_path / "cache" / "ImageNet" / "fishnet99_official.pth")
    served = torch.load(published["fishnet99_ckpt.tar"], weights_only=True)["state_dict"]
    plain = FishNet(FISHNET_VARIANTS[99], norm="BN", num_classes=1000).eval()
    plain.load_state_dict(convert_state_dict({k[len("module.") :]: v for k, v in served.items()}).state_dict)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x)["linear"], rtol=1e-4, atol=1e-4)
    # Later uses read the cache; features_only and other classes or channels adapt as timm does.
    features = timm.create_model("fishnet99.official_in1k", pretrained=True, features_only=True)
    gray = timm.create_model("fishnet99", pretrained=True, in_chans=1, num_classes=5)
    assert published_mirror.requests == ["fishnet99_ckpt.tar"]
    assert features.feature_info.channels() == [320, 832, 1600, 2112] and gray(torch.rand(1, 1, 64, 64)).shape == (1, 5)
    # pytorchcv's file (its own layout) given by path, and through checkpoint_path.
    pytorchcv = tmp_path / "fishnet99_pytorchcv.pth"
    torch.save(pytorchcv_state_dict(99), pytorchcv)
    plain.load_state_dict(convert_state_dict(pytorchcv_state_dict(99), layout="pytorchcv").state_dict)
    for given in (dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(pytorchcv))), dict(checkpoint_path=str(pytorchcv))):
        with torch.no_grad():
            torch.testing.assert_close(timm.create_model("fishnet99", **given).eval()(x), plain(x)["linear"], rtol=1e-4, atol=1e-4)
    # The download's own errors, with the timm way to give a file.
    published_mirror.faults["fishnet150_ckpt.tar"] = ("status", 403)
    with pytest.raises(WeightsUnavailableError, match=r"HTTP 403.*FISHNET_D2_MIRROR.*pretrained_cfg_overlay=dict\(file=PATH\)"):
        timm.create_model("fishnet150", pretrained=True)
