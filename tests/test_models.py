"""The model zoo through its public interface: the registry, exact parameter counts, knobs, LRN."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bench.errors import UserError
from bench.models import create_model, format_knobs, list_models, model_knobs, parse_knobs
from bench.models.lrn import LocalResponseNorm, local_response_norm
from bench.models.torchvision_models import min_input_side


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny batches gain nothing from intra-op threads, and OpenMP threads that
    # spin-wait on a shared 2-core machine made these tests ~30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(name: str) -> dict:
    """Shrink models that have a width knob so the whole zoo runs in seconds on a CPU."""
    return {"width": 0.25} if "width" in model_knobs(name) else {}


def layer_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
        for name, m in model.features.named_children()
    ]
    model(x)
    for h in hooks:
        h.remove()
    return shapes


# --- every registered model -------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_model_builds_runs_and_backpropagates(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **small(name))
    side = model.input_size
    batch = 1 if side > 64 else 2  # the 224/227 nets cost ~0.7 G multiply-adds per image
    out = model(torch.randn(batch, 3, side, side))
    assert out.shape == (batch, 10)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_full_width_cifar_alexnet_runs():
    model = create_model("alexnet")
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


# --- exact parameter counts --------------------------------------------------


def test_alexnet_paper_has_the_papers_parameter_count():
    assert n_params(create_model("alexnet-paper", num_classes=1000, groups=2)) == 60_965_224


@pytest.mark.parametrize("name", ["tv:alexnet", "alexnet-tv"])
def test_torchvision_alexnet_parameter_count(name):
    assert n_params(create_model(name, num_classes=1000)) == 61_100_840


def conv_weight_counts(model: nn.Module) -> dict[str, int]:
    return {n: m.weight.numel() for n, m in model.features.named_children() if isinstance(m, nn.Conv2d)}


def test_groups_halve_conv2_conv4_conv5_weights():
    one = conv_weight_counts(create_model("alexnet", groups=1))
    two = conv_weight_counts(create_model("alexnet", groups=2))
    assert one == {
        "conv1": 96 * 3 * 5 * 5,
        "conv2": 256 * 96 * 5 * 5,
        "conv3": 384 * 256 * 3 * 3,
        "conv4": 384 * 384 * 3 * 3,
        "conv5": 256 * 384 * 3 * 3,
    }
    assert two == {
        "conv1": 96 * 3 * 5 * 5,
        "conv2": 256 * 48 * 5 * 5,
        "conv3": 384 * 256 * 3 * 3,
        "conv4": 384 * 192 * 3 * 3,
        "conv5": 256 * 192 * 3 * 3,
    }


def conv_channels(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]


def test_conv_width_halves_conv1_to_conv4_like_the_papers_one_gpu_net():
    model = create_model("alexnet", groups=1, conv_width=0.5, width=0.25)
    assert conv_channels(model) == [12, 32, 48, 48, 64]
    assert model.classifier.fc6.out_features == 1024


def test_width_rounds_conv_channels_to_a_multiple_of_groups():
    model = create_model("alexnet", groups=2, width=0.01)
    assert conv_channels(model) == [2, 2, 4, 4, 2]
    assert model.classifier.fc6.out_features == 41
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# --- AlexNet knobs ----------------------------------------------------------


@pytest.mark.parametrize("name, pools", [("alexnet", [16, 8, 4]), ("alexnet-paper", [27, 13, 6])])
def test_overlapping_and_non_overlapping_pools_give_equal_map_sizes(name, pools):
    overlap = create_model(name, pool="overlap", width=0.125)
    nonoverlap = create_model(name, pool="nonoverlap", width=0.125)
    assert overlap.features.pool1.kernel_size == 3 and nonoverlap.features.pool1.kernel_size == 2
    x = torch.randn(1, 3, overlap.input_size, overlap.input_size)
    shapes = layer_shapes(overlap, x)
    assert shapes == layer_shapes(nonoverlap, x)
    assert [shapes[p][-1] for p in ("pool1", "pool2", "pool5")] == pools


def test_layers_are_modules_that_hooks_and_flop_counters_see():
    f = create_model("alexnet", width=0.125).features
    assert isinstance(f.norm1, LocalResponseNorm) and isinstance(f.norm2, LocalResponseNorm)
    assert (f.norm1.size, f.norm1.alpha, f.norm1.beta, f.norm1.k) == (5, 1e-4, 0.75, 2.0)
    assert all(isinstance(getattr(f, f"act{i}"), nn.ReLU) for i in range(1, 6))
    assert all(isinstance(getattr(f, p), nn.MaxPool2d) for p in ("pool1", "pool2", "pool5"))
    names = list(f._modules)
    assert names.index("act1") < names.index("norm1") < names.index("pool1")  # LRN after the ReLU


def test_norm_activation_and_dropout_knobs():
    bn = create_model("alexnet", norm="batchnorm", activation="tanh", dropout=0.0, width=0.125)
    assert all(isinstance(getattr(bn.features, n), nn.BatchNorm2d) for n in ("norm1", "norm2"))
    assert not any(isinstance(m, (nn.ReLU, nn.Dropout, LocalResponseNorm)) for m in bn.modules())
    assert sum(isinstance(m, nn.Tanh) for m in bn.modules()) == 7
    plain = create_model("alexnet", norm="none", dropout=0.3, width=0.125)
    assert not any(isinstance(m, (nn.BatchNorm2d, LocalResponseNorm)) for m in plain.modules())
    assert [m.p for m in plain.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3]


def test_paper_init_sets_weights_and_marked_biases():
    model = create_model("alexnet", init="paper", width=0.5)
    layers = dict(model.features.named_children()) | dict(model.classifier.named_children())
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        w = layers[name].weight
        assert abs(w.std().item() - 0.01) < 0.0005, name
        assert abs(w.mean().item()) < 0.001, name
        expected = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(layers[name].bias == expected), name
    default = create_model("alexnet", width=0.5)
    assert not torch.all(default.features.conv2.bias == 1.0)


# --- errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, knobs, bad",
    [
        ("alexnet", {"activation": "gelu"}, "gelu"),
        ("alexnet", {"norm": "bn"}, "bn"),
        ("alexnet", {"pool": "avg"}, "avg"),
        ("alexnet", {"groups": 3}, "3"),
        ("alexnet", {"groups": True}, "True"),
        ("alexnet", {"dropout": 1.0}, "1.0"),
        ("alexnet", {"width": 0}, "0"),
        ("alexnet-paper", {"conv_width": -1}, "-1"),
        ("lenet5-1998", {"activation": "relu"}, "relu"),
        ("vgg11", {"batchnorm": "yes"}, "yes"),
        ("resnet18", {"width": "big"}, "big"),
        ("zfnet", {"dropout": -0.1}, "-0.1"),
        ("alexnet-tv", {"dropout": 2}, "2"),
    ],
)
def test_bad_knob_value_is_a_user_error_naming_it(name, knobs, bad):
    with pytest.raises(UserError, match=rf"{list(knobs)[0]}=.*{bad}"):
        create_model(name, **knobs)


def test_unknown_knob_is_a_user_error_listing_valid_knobs():
    with pytest.raises(UserError, match="conv_width"):
        create_model("alexnet", lrn=True)


@pytest.mark.parametrize("name", ["alexnet2", "tv:not_a_model"])
def test_unknown_name_is_a_user_error(name):
    with pytest.raises(UserError, match="alexnet"):
        create_model(name)


def test_knob_strings_parse_to_typed_values_and_format_sorted():
    knobs = parse_knobs(["width=0.25", "groups=2", "activation=tanh", "dropout=0"])
    assert knobs == {"width": 0.25, "groups": 2, "activation": "tanh", "dropout": 0}
    assert isinstance(knobs["groups"], int) and isinstance(knobs["width"], float)
    assert format_knobs(knobs) == "activation=tanh,dropout=0,groups=2,width=0.25"
    assert format_knobs(parse_knobs(format_knobs(knobs).split(","))) == format_knobs(knobs)
    assert format_knobs(None) == format_knobs({}) == ""
    with pytest.raises(UserError, match="not key=value"):
        parse_knobs(["=tanh"])


# --- torchvision by name -------------------------------------------------------


def test_torchvision_model_runs_on_cifar_sized_input():
    model = create_model("tv:mobilenet_v3_small")
    assert model.input_size == 32
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()


def test_torchvision_models_upsample_to_their_minimum_side():
    assert min_input_side("alexnet") == 63 and min_input_side("vit_b_16") == 224
    model = create_model("tv:squeezenet1_1")
    assert model.resize_to == 17 and model.input_size == 32
    seen = []
    model.model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    model(torch.randn(1, 3, 8, 8))
    model(torch.randn(1, 3, 32, 32))
    assert seen == [(1, 3, 17, 17), (1, 3, 32, 32)]


# --- LRN: ours equals torch's with alpha scaled by size ---------------------------


@pytest.mark.parametrize("size", [5, 3, 4, 9])
def test_lrn_matches_torch_forward_and_gradient(size):
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 96, 16, 16) * 3).requires_grad_()
    alpha, beta, k = 1e-3, 0.75, 2.0
    ours = LocalResponseNorm(size, alpha, beta, k)(x)
    theirs = nn.LocalResponseNorm(size, alpha * size, beta, k)(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    g = torch.randn_like(x)
    (g_ours,) = torch.autograd.grad(ours, x, g)
    (g_theirs,) = torch.autograd.grad(theirs, x, g)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-5)


def test_lrn_matches_torch_with_the_papers_constants_on_3d_and_5d_inputs():
    for shape in [(2, 12, 7), (2, 12, 3, 4, 5)]:
        x = torch.randn(shape, requires_grad=True)
        ours = local_response_norm(x, 5, 1e-4, 0.75, 2.0)
        theirs = nn.functional.local_response_norm(x, 5, 5e-4, 0.75, 2.0)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        g = torch.randn(shape)
        (g_ours,), (g_theirs,) = torch.autograd.grad(ours, x, g), torch.autograd.grad(theirs, x, g)
        torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lrn_on_half_inputs_keeps_their_dtype_and_computes_in_float32(dtype):
    torch.manual_seed(0)
    x64 = torch.relu(torch.randn(2, 16, 5, 5, dtype=torch.float64) * 20)
    x = x64.to(dtype).requires_grad_()
    out = local_response_norm(x, 5, 1e-4, 0.75, 2.0)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert out.dtype == dtype and grad.dtype == dtype
    # Against float64 on the same (rounded) input: only the final rounding to `dtype` remains.
    ref = local_response_norm(x.detach().double(), 5, 1e-4, 0.75, 2.0)
    eps = torch.finfo(dtype).eps
    assert ((out.double() - ref).abs() <= eps * ref.abs() + 1e-6).all()


@pytest.mark.parametrize("size", [1, 2, 5, 9])
def test_lrn_gradcheck_float64(size):
    x = torch.randn(2, 7, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, size, 0.3, 0.75, 1.5), (x,))


def test_kaiming_init_keeps_the_signal_alive_through_alexnet():
    """He init: conv weights N(0, 2/fan_out), biases zero, and activations that do not vanish."""
    torch.manual_seed(0)
    model = create_model("alexnet", width=0.25, init="kaiming")
    conv2 = model.features.conv2
    fan_out = conv2.out_channels * conv2.kernel_size[0] * conv2.kernel_size[1]
    assert abs(conv2.weight.std().item() - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5
    assert all(m.bias.abs().max().item() == 0 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    model.eval()
    with torch.no_grad():
        logits_kaiming = model(torch.randn(16, 3, 32, 32))
        torch.manual_seed(0)
        logits_default = create_model("alexnet", width=0.25).eval()(torch.randn(16, 3, 32, 32))
    # the default init shrinks the signal by ~0.58 per layer: logits collapse towards zero
    assert logits_kaiming.std() > 10 * logits_default.std()
