"""Synthetic anomalies for validation: the kinds that vote and those only reported."""
