"""Ray Train / Ray Tune / MLflow entry points around the ``cutpaste`` library."""
