"""Per-GPU tuning tables: lookup at run time (runtime.py)."""

from questkern.tuning.runtime import resolve_config

__all__ = ["resolve_config"]
