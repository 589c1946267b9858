"""Serving a trained detector: ONNX export and batch scoring's per-batch logic."""
