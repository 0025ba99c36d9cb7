"""Architectures behind a registry: ``get_model(name, **kwargs)``, ``list_models()``."""

from .base import SlimmableNet
from .registry import get_model, list_models, register_model

__all__ = ["SlimmableNet", "get_model", "list_models", "register_model"]
