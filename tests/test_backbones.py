"""The table of encoders: VGG16 with batch norm and torchvision's ResNet-18, ResNet-34 and
MobileNetV3-Large under the original's UNet decoder, their ImageNet files read offline, and a
backbone registered by a test that trains, predicts and exports without another file changing."""

from urllib.error import URLError

import pytest
import torch
from torch import nn

import predict
import train
from nets import pretrained as pretrained_module
from nets.backbones import BACKBONES, Backbone
from nets.unet import Unet
from tests.conftest import base_argv
from utils.errors import UserError
from utils.training.checkpoint import backbone_of

NEW = ["vgg16_bn", "resnet18", "resnet34", "mobilenet_v3_large"]


def torchvision_models():
    return pytest.importorskip("torchvision").models


@pytest.mark.parametrize("name", NEW)
def test_each_new_encoder_gives_full_size_logits_under_its_own_prefix(name):
    torch.manual_seed(0)
    model = Unet(num_classes=3, backbone=name).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 96)).shape == (1, 3, 64, 96)
    state = model.state_dict()
    assert backbone_of(state) == name
    encoder = [k for k in state if k.startswith(f"{name}.")]
    assert encoder and not any(".fc." in k or "classifier" in k for k in encoder)
    model.freeze_backbone()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(f"{name}.")}
    multiple = BACKBONES[name].multiple
    with pytest.raises(UserError, match=rf"multiples of {multiple}.*height {multiple + 8} ->"):
        model(torch.rand(1, 3, multiple + 8, 64))
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.encoder.modules())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # --sync-bn: layers replaced
    ran = []
    for module in synced.encoder.modules():
        if isinstance(module, nn.SyncBatchNorm):
            module.register_forward_hook(lambda *_: ran.append(1))
    with torch.no_grad():
        synced(torch.rand(1, 3, 64, 64))
    assert norms and len(ran) == norms  # every one that runs is synced


@pytest.mark.parametrize("name", NEW)
def test_imagenet_weights_come_from_model_data_offline_and_give_torchvisions_features(
    name, tmp_path, monkeypatch
):
    models = torchvision_models()
    torch.manual_seed(0)
    theirs = models.get_model(name, weights=None).eval()
    for module in theirs.modules():  # statistics that only a loaded file gives
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    file_name = models.get_model_weights(name).IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    (tmp_path / "model_data").mkdir()
    torch.save(theirs.state_dict(), tmp_path / "model_data" / file_name)
    monkeypatch.chdir(tmp_path)

    def no_network(url, *args, **kwargs):
        raise URLError("network is unreachable")

    monkeypatch.setattr(pretrained_module, "load_state_dict_from_url", no_network)
    encoder = Unet(num_classes=2, pretrained=True, backbone=name).eval().encoder
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        if name.startswith("vgg"):  # all five maps: each ends before a pool
            expected, y = [], x
            for layer in theirs.features:
                expected += [y] if isinstance(layer, nn.MaxPool2d) else []
                y = layer(y)
        elif name.startswith("resnet"):
            stem = theirs.relu(theirs.bn1(theirs.conv1(x)))
            expected = [theirs.layer4(theirs.layer3(theirs.layer2(theirs.layer1(
                theirs.maxpool(stem)))))]  # fmt: skip
        else:
            expected = [theirs.features(x)]
        features = encoder(x)
    first = 32 if BACKBONES[name].first_at_half else 64
    assert [f.shape[-1] for f in features] == [first >> i for i in range(5)]
    assert [f.shape[1] for f in features] == list(BACKBONES[name].channels)
    for ours, theirs_map in zip(features[-len(expected) :], expected, strict=True):
        torch.testing.assert_close(ours, theirs_map, rtol=0, atol=0)
    (tmp_path / "model_data" / file_name).unlink()
    with pytest.raises(UserError, match=rf"place it at model_data/{file_name}"):
        Unet(num_classes=2, pretrained=True, backbone=name)


class TinyEncoder(nn.Module):
    """Five maps at strides 1 to 16, 4 or 8 channels: a backbone small enough for a test."""

    def __init__(self):
        super().__init__()
        shapes = [(3, 4, 1), (4, 4, 2), (4, 8, 2), (8, 8, 2), (8, 8, 2)]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, 3, stride=s, padding=1), nn.ReLU()) for i, o, s in shapes
        )

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


@pytest.mark.slow
def test_a_backbone_registered_by_a_test_trains_predicts_and_exports(data_root, tmp_path,
                                                                     monkeypatch, cli):  # fmt: skip
    row = Backbone("tiny", lambda pretrained: TinyEncoder(), "tiny", (4, 4, 8, 8, 8), 16, False,
                   "a test's")  # fmt: skip
    monkeypatch.setitem(BACKBONES, "tiny", row)
    argv = base_argv(data_root, tmp_path / "logs", "--backbone", "tiny", "--no-freeze-train",
                     "--unfreeze-epoch", "1", "--input-shape", "32", "32")  # fmt: skip
    code, out, err = cli(train.main, argv)
    assert code == 0, err
    weights = tmp_path / "logs" / "last_epoch_weights.pth"
    assert backbone_of(torch.load(weights, weights_only=True)) == "tiny"
    image = next((data_root / "VOC2007" / "JPEGImages").iterdir())
    argv = [str(image), "--model-path", str(weights), "--device", "cpu", "--dir-save-path",
            str(tmp_path / "out")]  # fmt: skip
    code, out, err = cli(predict.main, argv)
    assert code == 0, err
    assert (tmp_path / "out" / f"{image.stem}.png").exists()
    pytest.importorskip("onnx")
    code, out, err = cli(predict.main, ["--mode", "export_onnx", "--model-path", str(weights),
                                        "--device", "cpu", "--onnx-save-path",
                                        str(tmp_path / "tiny.onnx")])  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "tiny.onnx").exists()
