"""runner/train.py on the CPU: a tiny real training run, checkpoints, determinism, the loss and the schedule."""
from __future__ import annotations

import io
import json
import math

import pytest
import torch
import torch.nn.functional as F

from runner.train import DeviceBatches
from runner.data import synthetic
from runner.evaluate import accuracy
from runner.train import build_model, distill_loss, make_optimizer, model_from_checkpoint, one_cycle, train
from variants import Recipe, TrainSpec

CPU = torch.device("cpu")
# airbench at a quarter width is the cheapest model in the registry to train on 2 CPU cores.
TINY = (("width_mult", 0.25),)


def _spec(epochs=3, train_subset=256, batch_size=64, seed=0, lr=0.05) -> TrainSpec:
    return TrainSpec(key="tiny", arch="airbench_cifar", arch_args=TINY, seed=seed,
                     recipe=Recipe(epochs=epochs, batch_size=batch_size, lr=lr, train_subset=train_subset,
                                   test_subset=128))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny convolutions: one intra-op thread is as fast on an idle 2-core box and far faster on a busy one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return synthetic(n_train=256, n_test=128)


@pytest.fixture(scope="module")
def ckpt(data):
    logs: list[str] = []
    out = train(_spec(), data, CPU, log=logs.append)
    out["_logs"] = logs
    return out


def test_training_lowers_the_loss(ckpt):
    losses = [e["train_loss"] for e in ckpt["log"]]
    assert [e["epoch"] for e in ckpt["log"]] == [1, 2, 3]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses
    assert losses[0] < math.log(10) + 0.5  # starts near chance (ln 10 = 2.30)
    assert len(ckpt["_logs"]) == 3 and "epoch 3/3" in ckpt["_logs"][-1]


def test_checkpoint_contents(ckpt, data):
    spec = _spec()
    assert ckpt["key"] == "tiny" and ckpt["arch"] == "airbench_cifar" and ckpt["teacher"] is None
    assert ckpt["arch_args"] == {"width_mult": 0.25}
    assert ckpt["spec_hash"] == spec.spec_hash and ckpt["epochs"] == 3
    assert json.loads(ckpt["recipe_json"])["epochs"] == 3
    assert ckpt["train_s"] > 0 and ckpt["train_img_per_s"] > 0
    assert "subset train=256 test=128" in ckpt["data_source"]
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())
    for e in ckpt["log"]:
        assert 0 <= e["top1_pct"] <= 100 and 0 <= e["train_acc_pct"] <= 100 and e["epoch_s"] > 0
    assert 0 <= ckpt["top1_pct"] <= 100


def test_checkpoint_roundtrips_through_torch_save(ckpt, data):
    plain = {k: v for k, v in ckpt.items() if k != "_logs"}
    buf = io.BytesIO()
    torch.save(plain, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded.keys() == plain.keys()
    for k, v in plain["state_dict"].items():
        assert torch.equal(loaded["state_dict"][k], v), k
    a = model_from_checkpoint(plain, CPU)
    b = model_from_checkpoint(loaded, CPU)
    assert not a.training and not b.training
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ya, yb = a(x), b(x)
    assert ya.shape == (4, 10)
    assert torch.equal(ya, yb)
    # the rebuilt model reproduces the accuracy the checkpoint reports (fp32, same test subset)
    test = data.subset(0, 128)
    top1 = accuracy(b, DeviceBatches(test.test_x, test.test_y, CPU, 1000, train=False))
    assert top1 == pytest.approx(ckpt["top1_pct"])


def test_same_seed_same_weights(data):
    spec = _spec(epochs=1, train_subset=64, batch_size=32)
    a = train(spec, data, CPU, log=lambda s: None)
    b = train(spec, data, CPU, log=lambda s: None)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["log"][0]["train_loss"] == b["log"][0]["train_loss"]
    c = train(_spec(epochs=1, train_subset=64, batch_size=32, seed=1), data, CPU, log=lambda s: None)
    assert any(not torch.equal(a["state_dict"][k], c["state_dict"][k]) for k in a["state_dict"])


def test_distillation_runs_with_a_teacher(ckpt, data):
    spec = TrainSpec(key="kd", arch="airbench_cifar", arch_args=TINY, teacher="tiny",
                     recipe=Recipe(epochs=1, batch_size=32, lr=0.05, train_subset=64, test_subset=64))
    out = train(spec, data, CPU, teacher_ckpt={k: v for k, v in ckpt.items() if k != "_logs"}, log=lambda s: None)
    assert out["teacher"] == "tiny" and math.isfinite(out["log"][0]["train_loss"])


def test_batch_larger_than_train_set(data):
    with pytest.raises(ValueError, match="larger than"):
        train(_spec(epochs=1, train_subset=16, batch_size=32), data, CPU, log=lambda s: None)


# ---- loss, schedule, optimizer -------------------------------------------------------------------------

S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
T = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]])
Y = torch.tensor([1, 2])


def _kl_by_hand(student, teacher, t):
    log_q = torch.log_softmax(student / t, dim=1)
    log_p = torch.log_softmax(teacher / t, dim=1)
    p = torch.softmax(teacher / t, dim=1)
    return (p * (log_p - log_q)).sum() / student.shape[0]   # batchmean


def _ce_by_hand(student, y, ls=0.0):
    logp = torch.log_softmax(student, dim=1)
    nll = -logp[torch.arange(len(y)), y]
    smooth = -logp.mean(dim=1)
    return ((1 - ls) * nll + ls * smooth).mean()


def test_distill_loss_on_known_numbers():
    """distill_loss against scalar arithmetic (no torch) on one row: the soft KL term, its T^2 scale, the hard
    cross-entropy and their mix."""
    s, t, y = (1.0, 2.0, 0.5), (2.0, 0.0, 1.0), 1

    def softmax(v, temp):
        e = [math.exp(x / temp) for x in v]
        return [x / sum(e) for x in e]

    for alpha, temp in ((1.0, 1.0), (1.0, 2.0), (0.5, 4.0), (0.0, 3.0)):
        q, p = softmax(s, temp), softmax(t, temp)
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        ce = -math.log(softmax(s, 1.0)[y])
        want = alpha * temp ** 2 * kl + (1 - alpha) * ce
        got = distill_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), alpha=alpha, temperature=temp)
        assert got.item() == pytest.approx(want, rel=1e-5)
    # uniform logits over 3 classes: cross-entropy ln 3 for any label
    uniform = distill_loss(torch.zeros(2, 3), torch.zeros(2, 3), Y, alpha=0.0, temperature=4.0)
    assert uniform.item() == pytest.approx(math.log(3))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_distill_loss_matches_hand_computation(alpha, temp):
    got = distill_loss(S, T, Y, alpha=alpha, temperature=temp)
    want = alpha * temp * temp * _kl_by_hand(S, T, temp) + (1 - alpha) * _ce_by_hand(S, Y)
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)


def test_distill_loss_special_cases():
    assert distill_loss(S, T, Y, alpha=0.0, temperature=4.0).item() == pytest.approx(F.cross_entropy(S, Y).item())
    ls = distill_loss(S, T, Y, alpha=0.0, temperature=4.0, label_smoothing=0.1)
    assert ls.item() == pytest.approx(_ce_by_hand(S, Y, 0.1).item(), rel=1e-6)
    assert distill_loss(S, S, Y, alpha=1.0, temperature=4.0).abs().item() < 1e-6  # same logits: no soft loss
    assert distill_loss(S, T, Y, alpha=1.0, temperature=2.0).item() > 0
    # half-precision logits are computed in fp32
    assert distill_loss(S.half(), T.half(), Y, alpha=0.5, temperature=4.0).dtype == torch.float32


def test_one_cycle_schedule():
    f = one_cycle(100, 0.2)
    values = [f(s) for s in range(101)]
    assert values[0] == pytest.approx(0.1)
    assert values[20] == pytest.approx(1.0) and max(values) == pytest.approx(1.0)
    assert values.index(max(values)) == 20
    assert values[10] == pytest.approx(0.55)
    assert values[60] == pytest.approx(0.5)
    assert values[100] == 0.0
    assert all(a < b for a, b in zip(values[:20], values[1:21]))      # rising
    assert all(a > b for a, b in zip(values[20:100], values[21:101]))  # falling
    assert one_cycle(3, 0.01)(0) == pytest.approx(0.1) and one_cycle(3, 0.01)(1) == 1.0  # warm-up >= 1 step


def test_weight_decay_groups_exclude_1d_params():
    model = build_model("airbench_cifar", dict(TINY))
    opt = make_optimizer(model, Recipe(weight_decay=5e-4, lr=0.3, momentum=0.8, nesterov=True))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert decay["params"] and no_decay["params"]
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim <= 1 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(any(m.weight is p for p in no_decay["params"]) for m in bn)
    assert decay["lr"] == 0.3 and decay["momentum"] == 0.8 and decay["nesterov"] is True


@pytest.mark.parametrize("deterministic", [False, True])
def test_cudnn_mode_is_set_for_the_run_and_restored(deterministic):
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, False
    from runner.train import cudnn_mode
    with cudnn_mode(deterministic=deterministic):
        assert torch.backends.cudnn.deterministic is deterministic
        assert torch.backends.cudnn.benchmark is (not deterministic)   # autotuning picks kernels per process
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (False, False)
    with pytest.raises(RuntimeError):
        with cudnn_mode(deterministic=deterministic):
            raise RuntimeError("a failed run still restores the flags")
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (False, False)


def test_cpu_training_runs_one_accuracy_pass_per_epoch(data, monkeypatch):
    """On a CPU the last epoch's pass is already the fp32, contiguous, no-autocast one the checkpoint reports,
    so it is not run again (test_checkpoint_roundtrips_through_torch_save checks the number against a fresh pass)."""
    import runner.train as train_mod

    passes = []
    real = train_mod.accuracy
    monkeypatch.setattr(train_mod, "accuracy", lambda *a, **k: passes.append(1) or real(*a, **k))
    out = train(_spec(epochs=2, train_subset=64, batch_size=32), data, CPU, log=lambda s: None)
    assert len(passes) == 2
    assert out["top1_pct"] == out["log"][-1]["top1_pct"]
