"""The UNet model: shapes, state-dict keys, freezing, pretrained loading, input-size errors."""

from urllib.error import URLError

import pytest
import torch

from nets import pretrained as pretrained_module
from nets.unet import Unet, check_input_shape
from nets.vgg import VGG16_CONFIG, make_layers
from oracle.original import RefVggUnet
from utils.errors import UserError

VGG_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def torchvision_models():
    """torchvision's model zoo, to compare with; the test is skipped where it is not installed."""
    return pytest.importorskip("torchvision").models


def decoder_keys(with_up_conv: bool) -> list[str]:
    keys = [
        f"up_concat{i}.{conv}.{p}"
        for i in (4, 3, 2, 1)
        for conv in ("conv1", "conv2")
        for p in ("weight", "bias")
    ]
    if with_up_conv:
        keys += [f"up_conv.{i}.{p}" for i in (1, 3) for p in ("weight", "bias")]
    return keys + ["final.weight", "final.bias"]


@pytest.fixture(scope="module")
def vgg_unet():
    torch.manual_seed(0)
    return Unet(num_classes=21, backbone="vgg").eval()


@pytest.fixture(scope="module")
def resnet_unet():
    torch.manual_seed(0)
    return Unet(num_classes=21, backbone="resnet50").eval()


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_vgg_output_matches_input_size(vgg_unet, size):
    with torch.no_grad():
        out = vgg_unet(torch.randn(2, 3, *size))
    assert out.shape == (2, 21, *size)


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_resnet_output_matches_input_size(resnet_unet, size):
    with torch.no_grad():
        out = resnet_unet(torch.randn(1, 3, *size))
    assert out.shape == (1, 21, *size)


def test_vgg_state_dict_keys_are_the_references(vgg_unet):
    expected = [f"vgg.features.{i}.{p}" for i in VGG_CONV_INDICES for p in ("weight", "bias")]
    expected += decoder_keys(with_up_conv=False)
    assert list(vgg_unet.state_dict()) == expected
    assert vgg_unet.state_dict()["up_concat4.conv1.weight"].shape == (512, 1024, 3, 3)
    assert vgg_unet.state_dict()["up_concat1.conv1.weight"].shape == (64, 192, 3, 3)


def test_resnet_state_dict_keys_are_the_references(resnet_unet):
    with torch.device("meta"):  # the names and shapes only: no 25M weights to draw
        reference = torchvision_models().resnet50()
    torchvision_keys = [k for k in reference.state_dict() if not k.startswith("fc.")]
    expected = [f"resnet.{k}" for k in torchvision_keys] + decoder_keys(with_up_conv=True)
    assert list(resnet_unet.state_dict()) == expected
    assert resnet_unet.state_dict()["up_concat4.conv1.weight"].shape == (512, 3072, 3, 3)
    assert resnet_unet.state_dict()["up_conv.1.weight"].shape == (64, 64, 3, 3)


def test_resnet_stem_pool_is_the_references(resnet_unet):
    pool = resnet_unet.resnet.maxpool
    assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 0, True)


def test_the_originals_weights_file_loads_strictly_and_computes_the_same_output(tmp_path):
    reference = RefVggUnet(num_classes=21).eval()
    path = tmp_path / "unet_vgg_voc.pth"
    torch.save(reference.state_dict(), path)
    model = Unet(num_classes=21, backbone="vgg").eval()
    result = model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for size in ((32, 48), (64, 80)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)  # bit for bit


@pytest.mark.parametrize("backbone", ["vgg", "resnet50"])
def test_freeze_and_unfreeze_toggle_only_the_backbone(backbone):
    model = Unet(num_classes=3, backbone=backbone)
    encoder = model.vgg if backbone == "vgg" else model.resnet
    model.freeze_backbone()
    assert not any(p.requires_grad for p in encoder.parameters())
    assert all(
        p.requires_grad
        for n, p in model.named_parameters()
        if not n.startswith(("vgg.", "resnet."))
    )
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_backbone_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="use one of vgg, resnet50"):
        Unet(backbone="mobilenet")


def test_vgg_rejects_size_not_multiple_of_16_with_nearest_sizes(vgg_unet):
    with pytest.raises(ValueError, match=r"multiples of 16.*width 72 -> 64 or 80"):
        vgg_unet(torch.randn(1, 3, 64, 72))


def test_resnet_rejects_size_not_multiple_of_32_with_nearest_sizes(resnet_unet):
    with pytest.raises(ValueError, match=r"multiples of 32.*height 48 -> 32 or 64"):
        resnet_unet(torch.randn(1, 3, 48, 64))


def test_input_check_accepts_valid_sizes_and_rejects_tiny_ones():
    check_input_shape(512, 512, "resnet50")
    check_input_shape(16, 48, "vgg")
    with pytest.raises(UserError, match=r"height 8 -> 16"):
        check_input_shape(8, 16, "vgg")


def torchvision_vgg16_state_dict() -> dict:
    """A vgg16 file in torchvision's format, cheap to make: random features, empty classifier."""
    state = {f"features.{k}": v for k, v in make_layers(VGG16_CONFIG).state_dict().items()}
    for i, (out_f, in_f) in zip(
        (0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096)), strict=True
    ):
        state[f"classifier.{i}.weight"] = torch.empty(out_f, in_f)
        state[f"classifier.{i}.bias"] = torch.empty(out_f)
    return state


def test_pretrained_vgg_loads_local_torchvision_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_data").mkdir()
    state = torchvision_vgg16_state_dict()
    torch.save(state, tmp_path / "model_data" / "vgg16-397923af.pth")
    monkeypatch.setattr(pretrained_module, "load_state_dict_from_url", _no_network)
    model = Unet(num_classes=2, pretrained=True, backbone="vgg")
    for key in ("features.0.weight", "features.28.bias"):
        torch.testing.assert_close(model.vgg.state_dict()[key], state[key], rtol=0, atol=0)


def test_pretrained_resnet_loads_local_torchvision_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_data").mkdir()
    state = torchvision_models().resnet50().state_dict()
    torch.save(state, tmp_path / "model_data" / "resnet50-19c8e357.pth")
    monkeypatch.setattr(pretrained_module, "load_state_dict_from_url", _no_network)
    model = Unet(num_classes=2, pretrained=True, backbone="resnet50")
    for key in ("conv1.weight", "bn1.running_var", "layer4.2.conv3.weight"):
        torch.testing.assert_close(model.resnet.state_dict()[key], state[key], rtol=0, atol=0)


def _no_network(url, *args, **kwargs):
    raise URLError("network is unreachable")


@pytest.mark.parametrize(
    ("backbone", "file_name"),
    [("vgg", "vgg16-397923af.pth"), ("resnet50", "resnet50-19c8e357.pth")],
)
def test_pretrained_offline_without_file_names_the_file_to_place(
    tmp_path, monkeypatch, backbone, file_name
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pretrained_module, "load_state_dict_from_url", _no_network)
    with pytest.raises(UserError, match=rf"place it at model_data/{file_name}"):
        Unet(num_classes=2, pretrained=True, backbone=backbone)


def test_pretrained_file_with_wrong_contents_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_data").mkdir()
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "model_data" / "vgg16-397923af.pth")
    with pytest.raises(UserError, match="does not hold the expected backbone weights"):
        Unet(num_classes=2, pretrained=True, backbone="vgg")


def test_our_encoders_compute_what_torchvisions_do_with_its_weights():
    """nets/ builds VGG16 and ResNet50 without importing torchvision (a second of start-up);
    with torchvision's weights they give its features."""
    from nets.resnet import ResNet50
    from nets.vgg import VGG

    torch.manual_seed(0)
    theirs = torchvision_models().resnet50().eval()
    theirs.maxpool = torch.nn.MaxPool2d(3, 2, padding=0, ceil_mode=True)  # the reference's
    ours = ResNet50().eval()
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = theirs.layer4(theirs.layer3(theirs.layer2(theirs.layer1(
            theirs.maxpool(theirs.relu(theirs.bn1(theirs.conv1(x))))))))  # fmt: skip
        torch.testing.assert_close(ours(x)[-1], expected, rtol=0, atol=0)
    vgg = torchvision_models().vgg16().features.eval()
    ours_vgg = VGG().eval()
    ours_vgg.features.load_state_dict(vgg.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ours_vgg(x)[-1], vgg[:-1](x), rtol=0, atol=0)


@pytest.mark.parametrize(("size", "align_corners"), [((8, 10), True), ((5, 13), False)])
def test_the_deterministic_bilinear_is_f_interpolate_forward_with_its_gradient(size, align_corners):
    """Under --deterministic on CUDA, bilinear resizing keeps F.interpolate's forward (bit for
    bit) and computes its gradient as two matmuls; here the gradient is checked on the CPU."""
    from nets.interpolate import _DeterministicBilinear

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    ours = _DeterministicBilinear.apply(x, size, align_corners)
    theirs = torch.nn.functional.interpolate(x, size=size, mode="bilinear",
                                             align_corners=align_corners)  # fmt: skip
    assert torch.equal(ours, theirs)
    grad = torch.randn_like(ours)
    (grad_ours,) = torch.autograd.grad(ours, x, grad)
    (grad_theirs,) = torch.autograd.grad(theirs, x, grad)
    torch.testing.assert_close(grad_ours, grad_theirs)
    assert torch.autograd.gradcheck(lambda t: _DeterministicBilinear.apply(t, size, align_corners),
                                    (x,))  # fmt: skip


def test_the_decoder_upsampling_is_the_references_bit_for_bit():
    x = torch.randn(1, 8, 5, 7)
    reference = torch.nn.UpsamplingBilinear2d(scale_factor=2)
    from nets.interpolate import UpsamplingBilinear2d

    assert torch.equal(UpsamplingBilinear2d(scale_factor=2)(x), reference(x))
