"""The model zoo: importing this package registers every architecture."""

from bench.models.registry import (
    create_model,
    input_size_of,
    list_models,
    model_knobs,
    register_model,
    register_prefix,
)
from bench.models import layers80sec  # noqa: F401  (registers)

__all__ = ["create_model", "input_size_of", "list_models", "model_knobs", "register_model", "register_prefix"]
