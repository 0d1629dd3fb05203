"""CIFAR-10 classifiers for the latency runner, looked up by name.

`runner/train.py` calls `models.get_model(name, num_classes=10)`; importing this
package imports the model modules so that their `@register_model` runs.
"""

from models.registry import get_model, list_models, register_model

# Imported for their registration side effect.
from models import airbench, fastnet, mobilenetv3, resnet, shufflenetv2  # noqa: E402,F401

__all__ = ["get_model", "list_models", "register_model"]
