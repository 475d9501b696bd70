"""acsl: an experiment runner for long-tail object detection losses."""

__version__ = "0.1.0"
