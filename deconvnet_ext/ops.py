"""PLACEHOLDER (to be replaced by the fused-op wrappers): delegates to reference.py."""
from .reference import max_pool2d_with_switches, max_unpool2d_with_switches, switches_to_indices  # noqa: F401
