"""Anomaly maps: GradCAM, feature-map and patch maps as pictures."""
