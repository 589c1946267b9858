"""Cluster side: how a Ray cluster, an MLflow server and a bucket are stood up (may import pipelines, cutpaste)."""
