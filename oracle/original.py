"""The oracle: the seed's reference code for the VGG UNet, the losses, the data pipeline and the
predictor, nearly verbatim. The tests check our numbers against it and the benchmarks time ours
against it; the project itself never imports it.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def make_layers(cfg, in_channels=3):
    layers = []
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class RefVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = make_layers(CFG_D)

    def forward(self, x):
        feat1 = self.features[:4](x)
        feat2 = self.features[4:9](feat1)
        feat3 = self.features[9:16](feat2)
        feat4 = self.features[16:23](feat3)
        feat5 = self.features[23:-1](feat4)
        return [feat1, feat2, feat3, feat4, feat5]


class RefUp(nn.Module):
    def __init__(self, in_size, out_size):
        super().__init__()
        self.up = nn.UpsamplingBilinear2d(scale_factor=2)
        self.conv1 = nn.Conv2d(in_size, out_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_size, out_size, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, inputs1, inputs2):
        outputs = torch.cat([inputs1, self.up(inputs2)], 1)
        outputs = self.relu(self.conv1(outputs))
        return self.relu(self.conv2(outputs))


class RefVggUnet(nn.Module):
    def __init__(self, num_classes=21):
        super().__init__()
        self.vgg = RefVGG()
        in_filters, out_filters = [192, 384, 768, 1024], [64, 128, 256, 512]
        self.up_concat4 = RefUp(in_filters[3], out_filters[3])
        self.up_concat3 = RefUp(in_filters[2], out_filters[2])
        self.up_concat2 = RefUp(in_filters[1], out_filters[1])
        self.up_concat1 = RefUp(in_filters[0], out_filters[0])
        self.final = nn.Conv2d(out_filters[0], num_classes, 1)

    def forward(self, inputs):
        feat1, feat2, feat3, feat4, feat5 = self.vgg.forward(inputs)
        up4 = self.up_concat4(feat4, feat5)
        up3 = self.up_concat3(feat3, up4)
        up2 = self.up_concat2(feat2, up3)
        up1 = self.up_concat1(feat1, up2)
        return self.final(up1)


def ref_ce_loss(inputs, target, cls_weights, num_classes=21):
    n, c, h, w = inputs.size()
    temp_inputs = inputs.transpose(1, 2).transpose(2, 3).contiguous().view(-1, c)
    temp_target = target.view(-1)
    return nn.CrossEntropyLoss(weight=cls_weights, ignore_index=num_classes)(
        temp_inputs, temp_target
    )


def ref_focal_loss(inputs, target, cls_weights, num_classes=21, alpha=0.5, gamma=2):
    n, c, h, w = inputs.size()
    temp_inputs = inputs.transpose(1, 2).transpose(2, 3).contiguous().view(-1, c)
    temp_target = target.view(-1)
    logpt = -nn.CrossEntropyLoss(weight=cls_weights, ignore_index=num_classes, reduction="none")(
        temp_inputs, temp_target
    )
    pt = torch.exp(logpt)
    if alpha is not None:
        logpt *= alpha
    loss = -((1 - pt) ** gamma) * logpt
    return loss.mean()


def ref_dice_loss(inputs, target, beta=1, smooth=1e-5, hard_threshold=None):
    n, c, h, w = inputs.size()
    nt, ht, wt, ct = target.size()
    if h != ht and w != wt:
        inputs = F.interpolate(inputs, size=(ht, wt), mode="bilinear", align_corners=True)
    temp_inputs = torch.softmax(
        inputs.transpose(1, 2).transpose(2, 3).contiguous().view(n, -1, c), -1
    )
    if hard_threshold is not None:  # f_score
        temp_inputs = torch.gt(temp_inputs, hard_threshold).float()
    temp_target = target.view(n, -1, ct)
    tp = torch.sum(temp_target[..., :-1] * temp_inputs, axis=[0, 1])
    fp = torch.sum(temp_inputs, axis=[0, 1]) - tp
    fn = torch.sum(temp_target[..., :-1], axis=[0, 1]) - tp
    score = ((1 + beta**2) * tp + smooth) / ((1 + beta**2) * tp + beta**2 * fn + fp + smooth)
    if hard_threshold is not None:
        return torch.mean(score)
    return 1 - torch.mean(score)


def ref_rand(rng, a=0, b=1):
    return rng.random() * (b - a) + a


def ref_get_random_data(image, label, input_shape, rng, jitter=0.3, hue=0.1, sat=0.7, val=0.3):
    """The reference's training transform (full-size resize, flip, paste, HSV jitter)."""
    import cv2
    import numpy as np
    from PIL import Image

    image = image.convert("RGB")
    label = Image.fromarray(np.array(label))
    iw, ih = image.size
    h, w = input_shape
    new_ar = iw / ih * ref_rand(rng, 1 - jitter, 1 + jitter) / ref_rand(rng, 1 - jitter, 1 + jitter)
    scale = ref_rand(rng, 0.25, 2)
    if new_ar < 1:
        nh = int(scale * h)
        nw = int(nh * new_ar)
    else:
        nw = int(scale * w)
        nh = int(nw / new_ar)
    image = image.resize((nw, nh), Image.BICUBIC)
    label = label.resize((nw, nh), Image.NEAREST)
    if ref_rand(rng) < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        label = label.transpose(Image.FLIP_LEFT_RIGHT)
    dx = int(ref_rand(rng, 0, w - nw))
    dy = int(ref_rand(rng, 0, h - nh))
    new_image = Image.new("RGB", (w, h), (128, 128, 128))
    new_label = Image.new("L", (w, h), (0))
    new_image.paste(image, (dx, dy))
    new_label.paste(label, (dx, dy))
    image_data = np.array(new_image, np.uint8)
    r = rng.uniform(-1, 1, 3) * [hue, sat, val] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(image_data, cv2.COLOR_RGB2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    image_data = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(image_data, cv2.COLOR_HSV2RGB), new_label


def ref_letterbox(image, label, input_shape):
    """The reference's validation transform."""
    from PIL import Image

    image = image.convert("RGB")
    label = Image.fromarray(np.array(label))
    iw, ih = image.size
    h, w = input_shape
    scale = min(w / iw, h / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    image = image.resize((nw, nh), Image.BICUBIC)
    new_image = Image.new("RGB", [w, h], (128, 128, 128))
    new_image.paste(image, ((w - nw) // 2, (h - nh) // 2))
    label = label.resize((nw, nh), Image.NEAREST)
    new_label = Image.new("L", [w, h], (0))
    new_label.paste(label, ((w - nw) // 2, (h - nh) // 2))
    return new_image, new_label


def ref_getitem(image_path, label_path, input_shape, num_classes, train, rng):
    """The reference's ``UnetDataset.__getitem__``: float64 image, float64 np.eye one-hot."""
    from PIL import Image

    jpg, png = Image.open(image_path), Image.open(label_path)
    if train:
        jpg, png = ref_get_random_data(jpg, png, input_shape, rng)
    else:
        jpg, png = ref_letterbox(jpg, png, input_shape)
    jpg = np.transpose(np.array(jpg, np.float64) / 255.0, [2, 0, 1])
    png = np.array(png)
    png[png >= num_classes] = num_classes
    seg_labels = np.eye(num_classes + 1)[png.reshape([-1])]
    seg_labels = seg_labels.reshape((int(input_shape[0]), int(input_shape[1]), num_classes + 1))
    return jpg, png, seg_labels


def ref_collate(batch):
    images, pngs, seg_labels = zip(*batch, strict=True)
    return (
        torch.from_numpy(np.array(images)).type(torch.FloatTensor),
        torch.from_numpy(np.array(pngs)).long(),
        torch.from_numpy(np.array(seg_labels)).type(torch.FloatTensor),
    )


class RefPredictor:
    """The original's ``unet.Unet`` prediction around a given network: its ``get_miou_png``,
    ``detect_image`` and ``get_FPS``, step by step (letterbox, numpy softmax probabilities on
    the host, ``cv2.resize`` INTER_LINEAR, numpy argmax, Pillow drawing)."""

    COLORS = [
        (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
        (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0),
        (64, 0, 128), (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0),
        (0, 192, 0), (128, 192, 0), (0, 64, 128), (128, 64, 12),
    ]  # fmt: skip

    def __init__(self, net, input_shape=(512, 512), device="cpu", mix_type=0):
        self.net = net.eval().to(device)
        self.input_shape = input_shape
        self.device = device
        self.mix_type = mix_type

    def _input(self, image):
        from PIL import Image

        image = image.convert("RGB")
        iw, ih = image.size
        h, w = self.input_shape
        scale = min(w / iw, h / ih)
        nw, nh = int(iw * scale), int(ih * scale)
        resized = image.resize((nw, nh), Image.BICUBIC)
        canvas = Image.new("RGB", (w, h), (128, 128, 128))
        canvas.paste(resized, ((w - nw) // 2, (h - nh) // 2))
        data = np.transpose(np.array(canvas, np.float32) / 255.0, (2, 0, 1))[None]
        return torch.from_numpy(data).to(self.device), nw, nh

    def _crop(self, pr, nw, nh):
        h, w = self.input_shape
        return pr[(h - nh) // 2 : (h - nh) // 2 + nh, (w - nw) // 2 : (w - nw) // 2 + nw]

    def labels(self, image):
        import cv2

        orig_w, orig_h = image.size
        images, nw, nh = self._input(image)
        with torch.no_grad():
            pr = self.net(images)[0]
            pr = F.softmax(pr.permute(1, 2, 0), dim=-1).cpu().numpy()
        pr = self._crop(pr, nw, nh)
        pr = cv2.resize(pr, (orig_w, orig_h), interpolation=cv2.INTER_LINEAR)
        return pr.argmax(axis=-1)

    def get_miou_png(self, image):
        from PIL import Image

        return Image.fromarray(np.uint8(self.labels(image)))

    def detect_image(self, image):
        from PIL import Image

        image = image.convert("RGB")
        pr = self.labels(image)
        if self.mix_type == 2:
            return Image.fromarray((np.expand_dims(pr != 0, -1) * np.array(image, np.float32))
                                   .astype("uint8"))  # fmt: skip
        seg = np.reshape(np.array(self.COLORS, np.uint8)[np.reshape(pr, [-1])], [*pr.shape, -1])
        seg = Image.fromarray(np.uint8(seg))
        return seg if self.mix_type == 1 else Image.blend(image, seg, 0.7)

    def get_FPS(self, image, test_interval):
        """Seconds per image of the network, softmax, copy to the host, argmax and crop."""
        import time

        images, nw, nh = self._input(image)

        def once():
            with torch.no_grad():
                pr = self.net(images)[0]
                pr = F.softmax(pr.permute(1, 2, 0), dim=-1).cpu().numpy().argmax(axis=-1)
                return self._crop(pr, nw, nh)

        once()
        start = time.time()
        for _ in range(test_interval):
            once()
        return (time.time() - start) / test_interval
