"""Scorers fitted on normal features, the image score's selection and the threshold."""
