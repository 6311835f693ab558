"""RetinaFace, the face detector of DiffBIR's unaligned-face task (facexlib `detection/retinaface.py`).

Two official files, one architecture with two backbones:

* ``detection_Resnet50_Final.pth`` (``retinaface_resnet50``, DiffBIR's choice): torchvision's ResNet-50
  up to ``layer4`` as ``body.*``, FPN and SSH with 256 channels;
* ``detection_mobilenet0.25_Final.pth`` (``retinaface_mobile0.25``): a MobileNet-V1 at width 0.25 as
  ``body.stage1..3``, FPN and SSH with 64 channels.

Then ``fpn.output1..3`` / ``fpn.merge1..2``, ``ssh1..3`` (``conv3X3``, ``conv5X5_1``, ``conv5X5_2``,
``conv7X7_2``, ``conv7x7_3``: the official mixed case), and per level ``ClassHead.i``, ``BboxHead.i``,
``LandmarkHead.i`` (1 x 1 convolutions, two anchors per cell). Activations: LeakyReLU 0.1 where the FPN/SSH
width is <= 64, plain ReLU otherwise, as officially. The ResNet is written here (torchvision is not needed
to run it); its layout is torchvision's ``resnet50`` key for key.

``forward(x)`` takes the official input (BGR, 0..255 minus the mean (104, 117, 123), NCHW) and returns
``(loc (B, P, 4), scores (B, P, 2) softmaxed, landmarks (B, P, 10))`` in the prior order of
``diffbir_core.face.priors``. ``resnet_layers`` / ``width`` / ``mobilenet_base`` exist so that tests can build
tiny networks in the same layout; official files always read back the official values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import complete_config

RESNET50 = "resnet50"
MOBILENET = "mobilenet0.25"

OFFICIAL_CONFIG: dict = {
    "backbone": RESNET50,
    "out_channel": 256,
    "anchors": 2,
    "resnet_layers": (3, 4, 6, 3),
    "width": 64,  # ResNet stem width (torchvision's 64)
    "mobilenet_base": 8,  # MobileNet-0.25 first-layer width
}
OFFICIAL_CONFIGS = {
    RESNET50: OFFICIAL_CONFIG,
    MOBILENET: {**OFFICIAL_CONFIG, "backbone": MOBILENET, "out_channel": 64},
}


def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0, kernel: int = 3, relu: bool = True):
    layers = [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup)]
    if relu:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1):
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """facexlib's MobileNetV1 up to stage3 (its avgpool/fc are not part of the detector's state dict)."""

    def __init__(self, base: int = 8):
        super().__init__()
        b = base
        self.stage1 = nn.Sequential(
            _conv_bn(3, b, 2, leaky=0.1), _conv_dw(b, 2 * b, 1), _conv_dw(2 * b, 4 * b, 2),
            _conv_dw(4 * b, 4 * b, 1), _conv_dw(4 * b, 8 * b, 2), _conv_dw(8 * b, 8 * b, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(8 * b, 16 * b, 2), *[_conv_dw(16 * b, 16 * b, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(16 * b, 32 * b, 2), _conv_dw(32 * b, 32 * b, 1))
        self.out_channels = (8 * b, 16 * b, 32 * b)

    def forward(self, x):
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (stride on the 3 x 3 convolution, "v1.5")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNetBody(nn.Module):
    """torchvision ``resnet50`` through ``layer4``, returning layer2..4 (IntermediateLayerGetter's output)."""

    def __init__(self, layers=(3, 4, 6, 3), width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck(inplanes, planes, stride if j == 0 else 1))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.out_channels = tuple(width * 4 * 2**i for i in (1, 2, 3))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class SSH(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        if cout % 4:
            raise ValueError(f"RetinaFace: SSH width must be a multiple of 4, got {cout}")
        leaky = 0.1 if cout <= 64 else 0.0
        self.conv3X3 = _conv_bn(cin, cout // 2, relu=False)
        self.conv5X5_1 = _conv_bn(cin, cout // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(cout // 4, cout // 4, relu=False)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(cout // 4, cout // 4, relu=False)

    def forward(self, x):
        c5_1 = self.conv5X5_1(x)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(self.conv7X7_2(c5_1))], 1))


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], cout: int):
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        for i, cin in enumerate(in_channels, 1):
            setattr(self, f"output{i}", _conv_bn(cin, cout, leaky=leaky, kernel=1))
        self.merge1 = _conv_bn(cout, cout, leaky=leaky)
        self.merge2 = _conv_bn(cout, cout, leaky=leaky)

    def forward(self, feats):
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class _Head(nn.Module):
    def __init__(self, cin: int, anchors: int, values: int):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(cin, anchors * values, 1)

    def forward(self, x):
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    def __init__(self, backbone: str = RESNET50, out_channel: int = 256, anchors: int = 2,
                 resnet_layers=(3, 4, 6, 3), width: int = 64, mobilenet_base: int = 8):
        super().__init__()
        if backbone == RESNET50:
            self.body = ResNetBody(tuple(resnet_layers), width)
        elif backbone == MOBILENET:
            self.body = MobileNetV1(mobilenet_base)
        else:
            raise ValueError(f"RetinaFace: unknown backbone {backbone!r} (expected {RESNET50!r} or {MOBILENET!r})")
        self.fpn = FPN(self.body.out_channels, out_channel)
        self.ssh1, self.ssh2, self.ssh3 = (SSH(out_channel, out_channel) for _ in range(3))
        self.ClassHead = nn.ModuleList(_Head(out_channel, anchors, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(out_channel, anchors, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(out_channel, anchors, 10) for _ in range(3))

    def forward(self, x):
        fpn = self.fpn(self.body(x))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], 1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], 1)
        landm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], 1)
        return loc, F.softmax(conf, dim=-1), landm


def build(config: dict | None = None) -> nn.Module:
    """RetinaFace for `config` (missing keys: the official values of its backbone), eval mode, random weights."""
    config = dict(config or {})
    official = OFFICIAL_CONFIGS.get(config.get("backbone", RESNET50), OFFICIAL_CONFIG)
    return RetinaFace(**complete_config("RetinaFace", config, official)).eval()


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """Backbone and widths from the keys/shapes of a RetinaFace state dict."""
    out_channel = sd["fpn.output1.0.weight"].shape[0]
    anchors = sd["ClassHead.0.conv1x1.weight"].shape[0] // 2
    if "body.conv1.weight" in sd:
        layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"body.layer{i}.")}) for i in (1, 2, 3, 4))
        return {"backbone": RESNET50, "out_channel": out_channel, "anchors": anchors, "resnet_layers": layers,
                "width": sd["body.conv1.weight"].shape[0]}
    return {"backbone": MOBILENET, "out_channel": out_channel, "anchors": anchors,
            "mobilenet_base": sd["body.stage1.0.0.weight"].shape[0]}
