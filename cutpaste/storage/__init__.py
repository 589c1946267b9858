"""Datasets in S3 (or any S3-compatible store): manifest, per-node cache, parallel transfers, fetch-mvtec.

Every place that takes a data directory also takes ``s3://bucket/prefix``::

    root = materialize(data, [category])          # local dir in MVTec layout; a local path comes back as is
    samples = list_samples(root, category, "train")

The endpoint is ``endpoint_url`` or ``AWS_ENDPOINT_URL``; credentials and region come from the standard
AWS chain. Errors are :class:`StorageError` (a :class:`cutpaste.errors.DataError`) with one-line messages.
"""

from cutpaste.storage.cache import ObjectCache, default_cache_dir
from cutpaste.storage.datasets import index, list_categories, materialize, upload
from cutpaste.storage.manifest import DATASET_MANIFEST, Manifest, ManifestEntry, StaleManifestWarning
from cutpaste.storage.s3 import (
    AccessDeniedError,
    BucketNotFoundError,
    CorruptObjectError,
    ObjectNotFoundError,
    PrefixNotFoundError,
    S3Uri,
    StaleManifestError,
    StorageError,
    TransferError,
    is_remote,
    parse_s3_uri,
)
from cutpaste.storage.transfer import RetryPolicy

__all__ = [
    "DATASET_MANIFEST",
    "AccessDeniedError",
    "BucketNotFoundError",
    "CorruptObjectError",
    "Manifest",
    "ManifestEntry",
    "ObjectCache",
    "ObjectNotFoundError",
    "PrefixNotFoundError",
    "RetryPolicy",
    "S3Uri",
    "StaleManifestError",
    "StaleManifestWarning",
    "StorageError",
    "TransferError",
    "default_cache_dir",
    "index",
    "is_remote",
    "list_categories",
    "materialize",
    "parse_s3_uri",
    "upload",
]
