"""ResNet-18 with the standard CIFAR stem (32x32 input).

Used via `models.get_model("resnet18_cifar")` from `runner/train.py`.
"""

import torch.nn as nn

from models.registry import register_model


@register_model
def resnet18_cifar(*, num_classes: int = 10, **kw) -> nn.Module:
    # Extra kwargs go to torchvision's ResNet (e.g. zero_init_residual); unknown ones raise.
    from torchvision.models import resnet18  # here, not at import: torchvision costs ~2 s a process

    model = resnet18(weights=None, num_classes=num_classes, **kw)
    # Adapted stem: the ImageNet 7x7/2 conv + 3x3/2 max-pool would shrink a 32x32
    # image to 8x8 before the first block and lose most of the accuracy. A 3x3/1
    # conv and no max-pool give total stride 8, i.e. a 4x4 final feature map.
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    # Same init torchvision applies to its convs, so the new stem is not the odd one out.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
