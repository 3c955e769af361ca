"""cifar-conv-local, cuda-convnet's layers-conv-local-11pct: shapes, counts, constants, init, recipe, crops, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from bench.data import DataSpec, load_data, parse_augment
from bench.data.augment import augment_batch, center_crop
from bench.errors import UserError
from bench.measure import count_model
from bench.models import create_model, input_size_of, list_models
from bench.models.conv_local import INIT_STD, RECIPE
from bench.models.local import LocallyConnected2d
from bench.models.lrn import LocalResponseNorm
from bench.train.checkpoint import load_checkpoint
from bench.train.config import TrainConfig
from bench.train.loop import run_training, train
from bench.train.step import make_optimizer
from bench.use.predict import predict

NAME = "cifar-conv-local"
LAYERS = ("conv1", "conv2", "local3", "local4", "fc10")

# From layers-conv-local-11pct.cfg: weights + biases per layer. Locally connected layers
# have a 64x3x3 kernel and a bias per filter per location of their 6x6 output.
CONV1 = 64 * 3 * 5 * 5 + 64  # 4,864
CONV2 = 64 * 64 * 5 * 5 + 64  # 102,464
LOCAL3 = 6 * 6 * 64 * (64 * 3 * 3) + 64 * 6 * 6  # 1,329,408
LOCAL4 = 6 * 6 * 32 * (64 * 3 * 3) + 32 * 6 * 6  # 664,704
FC10 = 32 * 6 * 6 * 10 + 10  # 11,530
PARAMS = CONV1 + CONV2 + LOCAL3 + LOCAL4 + FC10  # 2,112,970

# Multiply-adds per 24x24 image: output elements x (input channels x kernel taps).
MACS = (
    24 * 24 * 64 * (3 * 5 * 5)  # conv1: 2,764,800
    + 12 * 12 * 64 * (64 * 5 * 5)  # conv2 on the 12x12 pool1 output: 14,745,600
    + 6 * 6 * 64 * (64 * 3 * 3)  # local3: 1,327,104
    + 6 * 6 * 32 * (64 * 3 * 3)  # local4: 663,552
    + 32 * 6 * 6 * 10  # fc10: 11,520
)  # 19,512,576


def layer_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
        for name, m in (*model.features.named_children(), *model.classifier.named_children())
    ]
    model(x)
    for h in hooks:
        h.remove()
    return shapes


# --- the architecture ---------------------------------------------------------------


def test_registered_for_24x24_input_with_the_cfgs_layers_and_maps():
    assert NAME in list_models() and input_size_of(NAME) == 24
    model = create_model(NAME)
    assert model.input_size == 24
    shapes = layer_shapes(model, torch.randn(2, 3, 24, 24))
    assert list(shapes) == [
        "conv1", "act1", "pool1", "norm1", "conv2", "act2", "norm2", "pool2",
        "local3", "act3", "local4", "act4", "flatten", "fc10",
    ]  # fmt: skip
    assert shapes["conv1"] == (64, 24, 24) and shapes["pool1"] == shapes["norm1"] == (64, 12, 12)
    assert shapes["conv2"] == shapes["norm2"] == (64, 12, 12) and shapes["pool2"] == (64, 6, 6)
    assert shapes["local3"] == (64, 6, 6) and shapes["local4"] == (32, 6, 6) and shapes["fc10"] == (10,)
    assert isinstance(model.features.local3, LocallyConnected2d)


def test_parameter_count_is_the_cfgs_and_norm_none_only_drops_the_lrn():
    lrn = create_model(NAME)
    plain = create_model(NAME, norm="none")
    assert sum(p.numel() for p in lrn.parameters()) == PARAMS == 2_112_970
    assert sum(p.numel() for p in plain.parameters()) == PARAMS
    assert sum(isinstance(m, LocalResponseNorm) for m in lrn.modules()) == 2
    assert not any(isinstance(m, (LocalResponseNorm, nn.LocalResponseNorm)) for m in plain.modules())
    assert "norm1" not in plain.features._modules and "pool1" in plain.features._modules
    biases = {n: tuple(p.shape) for n, p in lrn.named_parameters() if n.endswith("bias")}
    assert biases["features.local3.bias"] == (64, 6, 6) and biases["features.conv1.bias"] == (64,)


def test_width_and_activation_knobs():
    half = create_model(NAME, width=0.5, activation="tanh")
    assert half.features.local4.out_channels == 16 and half.classifier.fc10.in_features == 16 * 6 * 6
    assert sum(isinstance(m, nn.Tanh) for m in half.modules()) == 4
    assert not any(isinstance(m, nn.ReLU) for m in half.modules())
    with pytest.raises(UserError, match="norm='batchnorm'.*lrn, none"):
        create_model(NAME, norm="batchnorm")


def test_rnorm_is_cuda_convnets_cmrnorm_size_9_scale_0001_pow_075():
    norm = create_model(NAME).features.norm1
    assert (norm.size, norm.alpha, norm.beta, norm.k) == (9, 0.001 / 9, 0.75, 1.0)
    # cuda-convnet: a / (1 + (0.001 / 9) * sum over 9 maps of a^2)^0.75, which is torch's
    # LRN with alpha=0.001 (torch divides alpha by size).
    x = torch.randn(2, 64, 6, 6, generator=torch.Generator().manual_seed(0)) * 30
    want = nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0)(x)
    torch.testing.assert_close(norm(x), want, rtol=1e-5, atol=1e-5)
    assert (x / norm(x)).mean() > 1.3  # at this scale the denominator is far from 1: a real check


def test_macs_and_params_by_hand_agree_with_the_counters():
    model = create_model(NAME)
    counts = count_model(model, 24)
    assert counts["params_total"] == PARAMS
    assert counts["macs"] == MACS == 19_512_576
    assert counts["uncounted_ops"] == ""  # im2col (unfold) is data movement, not an unknown op
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 24, 24))
    assert counter.get_total_flops() == 2 * MACS


# --- the locally connected layer ------------------------------------------------------


def slow_local(x, weight, bias, stride, padding):
    """One conv kernel per output location, by explicit loops."""
    xp = F.pad(x, (padding,) * 4)
    out_h, out_w, _, _, k, _ = weight.shape
    out = torch.zeros(x.shape[0], weight.shape[2], out_h, out_w, dtype=x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, :, i * stride : i * stride + k, j * stride : j * stride + k]  # N, C, k, k
            out[:, :, i, j] = torch.einsum("nckl,ockl->no", patch, weight[i, j]) + bias[:, i, j]
    return out


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0)])
def test_locally_connected_matches_a_slow_loop_forward_and_backward(stride, padding):
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 4, 3, 5, stride=stride, padding=padding).double()
    nn.init.normal_(layer.bias)  # the default draws both; make sure the bias is not 0 either
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 4, layer.output_size, layer.output_size)
    want = slow_local(x, layer.weight, layer.bias, stride, padding)
    torch.testing.assert_close(out, want)
    g = torch.randn_like(out)
    got_grads = torch.autograd.grad(out, (x, layer.weight, layer.bias), g)
    want_grads = torch.autograd.grad(want, (x, layer.weight, layer.bias), g)
    for got, expected in zip(got_grads, want_grads):
        torch.testing.assert_close(got, expected)


def test_locally_connected_weights_are_untied_and_the_input_side_is_fixed():
    layer = LocallyConnected2d(2, 3, 3, 4, padding=1)
    assert layer.weight.shape == (4, 4, 3, 2, 3, 3) and layer.bias.shape == (3, 4, 4)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        layer.weight[1, 2] = 1.0  # only output location (1, 2) sees the input
    out = layer(torch.ones(1, 2, 4, 4))
    assert out[0, :, 1, 2].tolist() == [18.0] * 3  # 2 channels x 9 taps of ones
    assert out.abs().sum() == 54.0
    with pytest.raises(ValueError, match="built for 2x4x4 inputs.*got 2x5x5"):
        layer(torch.ones(1, 2, 5, 5))


# --- initialisation --------------------------------------------------------------------


def test_paper_init_draws_each_layer_at_the_cfgs_initw_with_zero_biases():
    torch.manual_seed(0)
    model = create_model(NAME, init="paper")
    layers = dict(model.features.named_children()) | dict(model.classifier.named_children())
    assert INIT_STD == {"conv1": 1e-4, "conv2": 0.01, "local3": 0.04, "local4": 0.04, "fc10": 0.01}
    for name in LAYERS:
        w = layers[name].weight
        assert abs(w.std().item() / INIT_STD[name] - 1) < 0.05, name  # conv1: 4,800 draws, ~1% spread
        assert abs(w.mean().item()) < 0.1 * INIT_STD[name], name
        assert torch.all(layers[name].bias == 0), name
    default = create_model(NAME)
    assert default.features.local3.bias.abs().sum() > 0 and default.features.conv1.weight.std() > 0.01


def test_default_init_of_a_locally_connected_layer_is_a_convs_from_its_fan_in():
    """As nn.Conv2d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels * k * k.
    local4 (64 in, 32 out) has a fan-out half its fan-in: drawn from the fan-out, weights would
    reach 1/sqrt(288), beyond the bound."""
    torch.manual_seed(0)
    local4 = create_model(NAME).features.local4
    assert (local4.in_channels, local4.out_channels, local4.fan_in) == (64, 32, 576)
    bound = 1 / 576**0.5
    for p in (local4.weight, local4.bias):
        assert p.abs().max() <= bound and p.abs().max() > 0.99 * bound  # 663,552 and 1,152 draws fill it


def test_kaiming_init_treats_a_locally_connected_layer_as_a_conv():
    torch.manual_seed(0)
    local = create_model(NAME, init="kaiming").features.local3
    assert abs(local.weight.std().item() / (2.0 / (64 * 9)) ** 0.5 - 1) < 0.01
    assert torch.all(local.bias == 0)


# --- the recipe: per-layer weight decay, biases at twice the rate -----------------------


def groups_by_name(model: nn.Module, optimizer) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_layers_decay_gives_the_cfgs_rates_and_weight_costs():
    model = create_model(NAME, width=0.25)
    opt = make_optimizer(model, RECIPE["lr"], RECIPE["momentum"], RECIPE["weight_decay"], RECIPE["decay"])
    got = groups_by_name(model, opt)
    prefix = {name: ("features." if name != "fc10" else "classifier.") + name for name in LAYERS}
    wc = {"conv1": 0.0, "conv2": 0.0, "local3": 0.004, "local4": 0.004, "fc10": 0.01}  # the cfg's
    for name in LAYERS:
        lr, wd = got[prefix[name] + ".weight"]
        assert lr == 0.001 and wd == pytest.approx(wc[name]), name
        assert got[prefix[name] + ".bias"] == (0.002, 0.0), name  # epsB = 2 epsW, no decay
    assert opt.param_groups[0]["lr"] == 0.001  # the loop logs the first group's rate
    assert len(got) == len(list(model.parameters()))


def test_layers_decay_steps_as_cuda_convnet():
    """With unit gradients and no momentum: weights move by lr (1 + wc W) per unit, biases by 2 lr."""
    model = create_model(NAME, width=0.25)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model, lr=0.1, momentum=0.0, weight_decay=0.004, decay="layers")
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for n, p in model.named_parameters():
        wc = {"local3": 0.004, "local4": 0.004, "fc10": 0.01}.get(n.split(".")[1], 0.0)
        want = before[n] - 0.2 if n.endswith("bias") else before[n] - 0.1 * (1 + wc * before[n])
        torch.testing.assert_close(p.detach(), want, msg=n)


def test_layers_decay_without_declarations_is_weights_decay_and_weights_skips_3d_biases():
    plain = create_model("layers-80sec")
    layers = groups_by_name(plain, make_optimizer(plain, 0.01, weight_decay=5e-4, decay="layers"))
    weights = groups_by_name(plain, make_optimizer(plain, 0.01, weight_decay=5e-4, decay="weights"))
    assert layers == {n: (0.01, wd) for n, (_, wd) in weights.items()}
    model = create_model(NAME, width=0.25)
    decayed = {n for n, (_, wd) in groups_by_name(model, make_optimizer(model, 0.01, decay="weights")).items() if wd}
    assert decayed == {f"features.{n}.weight" for n in LAYERS[:4]} | {"classifier.fc10.weight"}


def test_recipe_is_a_valid_config():
    cfg = TrainConfig(model=NAME, **RECIPE)
    assert (cfg.decay, cfg.preprocess, cfg.init) == ("layers", "meanonly", "paper")


# --- 24x24 crops of the 32x32 images -----------------------------------------------------


def test_crop_augmentation_cuts_a_random_window_and_otherwise_the_centre():
    n = 400  # enough draws that each of the 9 offsets per axis turns up (each misses with p < 1e-19)
    x = torch.arange(n * 3 * 32 * 32, dtype=torch.float32).view(n, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, parse_augment("crop"), None, g, crop_size=24)
    assert out.shape == (n, 3, 24, 24)
    offsets = []
    for i in range(n):  # x[i] is strictly increasing: the window's first pixel gives its position
        dy, dx = divmod(int(out[i, 0, 0, 0] - x[i, 0, 0, 0]), 32)
        assert 0 <= dy <= 8 and 0 <= dx <= 8
        assert torch.equal(out[i], x[i, :, dy : dy + 24, dx : dx + 24])
        offsets.append((dy, dx))
    # every window position, the last (8, 8 pixels in) included
    assert {dy for dy, _ in offsets} == set(range(9)) and {dx for _, dx in offsets} == set(range(9))
    x = x[:6]
    flipped = augment_batch(x, parse_augment("flip"), None, torch.Generator().manual_seed(0), crop_size=24)
    centre = x[:, :, 4:28, 4:28]
    for i in range(6):  # without `crop`: the centre window, flipped or not
        assert torch.equal(flipped[i], centre[i]) or torch.equal(flipped[i], centre[i].flip(2))


def test_cifar10_batches_are_24x24_crops_random_in_training_centre_in_evaluation(cifar10_root, cifar10_md5_bypass):
    data = load_data(DataSpec(source="cifar10", root=str(cifar10_root.root), crop_size=24, val_size=10))
    assert data.train_x.shape[1:] == (3, 32, 32) and data.crop_size == 24
    assert data.provenance["input_crop"].startswith("24x24 of 32x32")
    g = torch.Generator().manual_seed(0)
    train_batches = list(data.batches("train", 30, augment=parse_augment("crop+flip"), generator=g))
    assert all(x.shape[1:] == (3, 24, 24) for x, _ in train_batches)
    for split, images in (("test", data.test_x), ("val", data.val_x)):
        got = torch.cat([x for x, _ in data.batches(split, 7)])
        assert torch.equal(got, center_crop(data.normalizer(images), 24))
        assert torch.equal(center_crop(images, 24), images[:, :, 4:28, 4:28])
    whole = load_data(DataSpec(source="cifar10", root=str(cifar10_root.root)))
    assert whole.crop_size is None and "input_crop" not in whole.provenance
    assert next(whole.batches("test", 7))[0].shape[1:] == (3, 32, 32)


# --- training through the one loop -------------------------------------------------------


def test_one_step_on_synthetic_data():
    cfg = TrainConfig(
        model=NAME,
        knobs={"width": 0.25},
        data="synthetic",
        train_per_class=2,
        test_per_class=1,
        val_size=0,
        epochs=1,
        device="cpu",
        **{**RECIPE, "batch_size": 20},
    )
    result = train(cfg, progress=False)
    assert result.status == "ok" and len(result.progress) >= 1
    assert np.isfinite(result.history[0]["train_running_loss"])


def test_recipe_trains_on_cifar10_crops_and_predict_takes_the_centre(
    cifar10_root, cifar10_md5_bypass, tmp_path, monkeypatch
):
    cfg = TrainConfig(
        model=NAME,
        knobs={"width": 0.25},
        data="cifar10",
        data_root=str(cifar10_root.root),
        val_size=10,
        epochs=1,
        device="cpu",
        **{**RECIPE, "batch_size": 45},
    )
    seen = []
    forward = LocallyConnected2d.forward

    def recording(self, x):
        seen.append(tuple(x.shape[-2:]))
        return forward(self, x)

    monkeypatch.setattr(LocallyConnected2d, "forward", recording)
    result = run_training(cfg, tmp_path / "run", progress=False)
    assert result.status == "ok" and result.summary["input_crop"].startswith("24x24")
    assert np.isfinite(result.history[0]["train_running_loss"]) and "test_top1_err_pct" in result.history[0]
    assert set(seen) == {(6, 6)}  # every batch, trained or evaluated, reached local3 at 6x6
    image = cifar10_root.test_data[0].reshape(3, 32, 32)
    path = tmp_path / "0.png"
    Image.fromarray(image.transpose(1, 2, 0)).save(path)
    ckpt = load_checkpoint(tmp_path / "run")
    with torch.no_grad():
        x = center_crop(ckpt.normalizer(torch.from_numpy(image)[None]), 24)
        want = torch.softmax(result.model.eval()(x), 1)[0]
    got = predict(tmp_path / "run", [str(path)], k=1, device="cpu")["predictions"][0]["top"][0]
    assert got["class"] == ckpt.classes[int(want.argmax())]
    assert got["probability"] == pytest.approx(want.max().item(), rel=1e-5)


def test_any_source_is_cropped_for_the_net_not_resized(tmp_path):
    """The net is registered as taking crops of 32x32 images: a folder (the JPEG copy of CIFAR-10)
    or synthetic data is held at 32x32 and cut to 24x24, never resized to 24."""
    from bench.train.config import TrainConfig
    from bench.train.dataspec import data_spec

    spec = data_spec(TrainConfig(model=NAME, data="synthetic", train_per_class=4, test_per_class=2, val_size=0))
    assert (spec.image_size, spec.crop_size) == (32, 24)
    data = load_data(spec)
    assert data.train_x.shape[1:] == (3, 32, 32) and data.crop_size == 24
    assert next(data.batches("test", 5))[0].shape[1:] == (3, 24, 24)
    assert data.provenance["input_crop"].startswith("24x24 of 32x32")
    assert data_spec(TrainConfig(model="alexnet")).crop_size is None  # other nets: whole images
