"""CutPaste anomaly detection (Li, Sohn, Yoon, Pfister, CVPR 2021) in pure PyTorch.

The library imports neither Ray nor MLflow: ``pipelines/`` wraps it for clusters and tracking.
"""

__version__ = "0.1.0"
