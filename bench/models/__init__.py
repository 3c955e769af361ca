"""The model zoo: importing this package registers every architecture."""

from bench.models import (  # noqa: F401  (register)
    alexnet,
    conv_local,
    googlenet,
    layers80sec,
    lenet,
    resnet,
    torchvision_models,
    vgg,
    zfnet,
)
from bench.models.knobs import format_knobs, parse_knobs
from bench.models.registry import (
    create_model,
    crop_from_of,
    input_size_of,
    list_models,
    model_knobs,
    register_model,
    register_prefix,
)

__all__ = [
    "create_model",
    "crop_from_of",
    "format_knobs",
    "input_size_of",
    "list_models",
    "model_knobs",
    "parse_knobs",
    "register_model",
    "register_prefix",
]
