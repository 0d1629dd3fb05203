"""ShuffleNetV2 (x1.0 and x0.5) with the stem downsampling removed for 32x32 input.

Used via `models.get_model("shufflenet_v2_x1_0_cifar")` from `runner/train.py`.
"""

from typing import Callable

import torch.nn as nn

from models.registry import register_model


def _adapt(builder: Callable[..., nn.Module], num_classes: int, **kw) -> nn.Module:
    model = builder(weights=None, num_classes=num_classes, **kw)
    # ImageNet stem = 3x3/2 conv + 3x3/2 max-pool, then three stride-2 stages:
    # total stride 32, so a 32x32 image would end as a 1x1 map. Stem conv stride 1
    # and no max-pool leave total stride 8 (4x4 last map), like the CIFAR ResNet stem.
    conv = model.conv1[0]
    assert isinstance(conv, nn.Conv2d) and tuple(conv.stride) == (2, 2), (
        f"conv1[0]: expected a stride-2 Conv2d, got {conv!r}"
    )
    conv.stride = (1, 1)
    assert isinstance(model.maxpool, nn.MaxPool2d), f"maxpool: got {model.maxpool!r}"
    model.maxpool = nn.Identity()
    return model


@register_model
def shufflenet_v2_x1_0_cifar(*, num_classes: int = 10, **kw) -> nn.Module:
    from torchvision.models import shufflenet_v2_x1_0  # here, not at import: torchvision costs ~2 s a process
    return _adapt(shufflenet_v2_x1_0, num_classes, **kw)


@register_model
def shufflenet_v2_x0_5_cifar(*, num_classes: int = 10, **kw) -> nn.Module:
    from torchvision.models import shufflenet_v2_x0_5
    return _adapt(shufflenet_v2_x0_5, num_classes, **kw)
