"""PLACEHOLDER (to be replaced by the fused-op wrapper): delegates to reference.py."""
from .reference import aggregate_proposals  # noqa: F401
