"""Fast CPU checks for every model in the registry (models/)."""

from pathlib import Path

import pytest
import torch
import yaml

import models
from models import get_model, list_models, register_model, registry

NAMES = list_models()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32)


def test_every_arch_in_the_shipped_sweeps_is_registered():
    """A sweep file names its architectures by registry name; one missing would fail the sweep's training."""
    archs = set()
    for path in sorted(ROOT.glob("variants/**/*.yaml")):
        archs |= {m["arch"] for m in yaml.safe_load(path.read_text())["models"].values()}
    assert {"resnet18_cifar", "mobilenet_v3_small_cifar", "shufflenet_v2_x1_0_cifar", "airbench_cifar"} <= archs
    assert archs <= set(NAMES)


def test_register_then_get_passes_arguments(monkeypatch):
    """register_model is the only way in: a new builder is listed, found by name, and gets num_classes and
    the arch_args given to get_model."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test
    seen = {}

    def tiny_test_net(*, num_classes=10, width=4):
        seen.update(num_classes=num_classes, width=width)
        return torch.nn.Linear(width, num_classes)

    assert register_model(tiny_test_net) is tiny_test_net   # a decorator: the function itself comes back
    assert "tiny_test_net" in list_models() and registry.get_builder("tiny_test_net") is tiny_test_net
    model = get_model("tiny_test_net", num_classes=3, width=5)
    assert seen == {"num_classes": 3, "width": 5} and model.weight.shape == (3, 5)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_finite(name):
    model = get_model(name)
    y = model(_x())  # train mode: BN uses batch stats
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_num_classes(name):
    model = get_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(_x()).shape == (2, 7)


@pytest.mark.parametrize("name", NAMES)
def test_eval_deterministic(name):
    model = get_model(name).eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_fresh_random_init(name):
    # No pretrained weights: two seeds must give different parameters.
    torch.manual_seed(1)
    a = get_model(name, num_classes=10)
    torch.manual_seed(2)
    b = get_model(name, num_classes=10)
    pa, pb = list(a.parameters()), list(b.parameters())
    assert len(pa) == len(pb)
    assert any(not torch.equal(p, q) for p, q in zip(pa, pb))


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_matches_contiguous(name):
    model = get_model(name).eval()
    x = _x()
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    # Untrained eval-mode logits can be ~1e-9 (mobilenet), so also compare relative to their scale.
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_duplicate_registration_raises():
    before = list_models()

    def resnet18_cifar(*, num_classes=10, **kw):  # same name as a registered model
        raise AssertionError("must not be registered")

    with pytest.raises(ValueError, match="resnet18_cifar"):
        register_model(resnet18_cifar)
    assert list_models() == before
    assert type(get_model("resnet18_cifar")).__name__ == "ResNet"


def test_unknown_name_lists_available():
    with pytest.raises((KeyError, ValueError)) as info:
        get_model("no_such_model")
    msg = str(info.value)
    assert "no_such_model" in msg
    for name in NAMES:
        assert name in msg


def test_public_api():
    assert set(models.__all__) == {"get_model", "list_models", "register_model"}
