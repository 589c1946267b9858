"""Metrics, validation, the test evaluation and results tables."""
