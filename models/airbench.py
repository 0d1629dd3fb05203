"""Small, latency-first CIFAR-10 net modelled on the airbench speedrun network.

Used via `models.get_model("airbench_cifar")` from `runner/train.py`.
Plain nn.Module ops only, so torch.compile and the usual export paths apply.
"""

import torch
import torch.nn as nn

from models.registry import register_model

# Block widths of airbench94 (Keller Jordan's CIFAR-10 speedrun, github.com/KellerJordan/cifar10-airbench).
WIDTHS = {"block1": 64, "block2": 256, "block3": 256}

STEM_WIDTH = 24  # 2x2 patches x 3 colours x 2 (airbench's whitening width)
LOGIT_SCALE = 1 / 9  # airbench's fixed output scale: keeps logits small early in training


class ConvGroup(nn.Module):
    """conv -> max-pool/2 -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


class AirbenchNet(nn.Module):
    def __init__(self, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        w = {k: max(1, round(v * width_mult)) for k, v in WIDTHS.items()}
        # 2x2 conv, padding 0: 32x32 -> 31x31. airbench initialises it as a
        # patch-whitening filter from data; here it is simply learned.
        self.stem = nn.Conv2d(3, STEM_WIDTH, kernel_size=2, padding=0, bias=True)
        self.act = nn.GELU()
        # Spatial: 31 -> 15 -> 7 -> 3 (each block's max-pool halves, floor).
        self.block1 = ConvGroup(STEM_WIDTH, w["block1"])
        self.block2 = ConvGroup(w["block1"], w["block2"])
        self.block3 = ConvGroup(w["block2"], w["block3"])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(w["block3"], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.block3(self.block2(self.block1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x) * LOGIT_SCALE


@register_model
def airbench_cifar(*, num_classes: int = 10, width_mult: float = 1.0, **kw) -> nn.Module:
    if kw:
        raise TypeError(f"airbench_cifar got unexpected arguments: {sorted(kw)}")
    return AirbenchNet(num_classes=num_classes, width_mult=width_mult)
