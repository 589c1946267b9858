"""``cutpaste data index|upload|materialize|fetch-mvtec``: registered on the ``data`` sub-parser of the CLI.

Errors are :class:`~cutpaste.storage.s3.StorageError` (a ``CutPasteError``): the CLI prints one line.
"""

from __future__ import annotations

import argparse
from typing import Any

from cutpaste.progress import show_progress


def _add_endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL, else AWS S3)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _cmd_index(args: argparse.Namespace) -> int:
    from cutpaste.storage.datasets import index

    manifest, changes = index(args.s3uri, endpoint_url=args.s3_endpoint, progress=show_progress(args.no_progress))
    cats = manifest.categories()
    print(
        f"indexed {len(manifest.entries)} samples in {len(cats)} categories ({', '.join(cats)}); "
        f"wrote s3://{manifest.uri.bucket}/{manifest.key}"
    )
    if changes is not None:
        print(f"changes since the previous manifest: {changes.summary() if changes else 'none'}")
    return 0


def _cmd_upload(args: argparse.Namespace) -> int:
    from cutpaste.storage.datasets import upload

    report, manifest = upload(
        args.local_dir,
        args.s3uri,
        endpoint_url=args.s3_endpoint,
        workers=args.workers,
        progress=show_progress(args.no_progress),
    )
    print(
        f"uploaded {report.uploaded} files ({report.bytes_uploaded / 1e6:.1f} MB), skipped {report.skipped} unchanged; "
        f"indexed {len(manifest.entries)} samples in {len(manifest.categories())} categories"
    )
    return 0


def _cmd_materialize(args: argparse.Namespace) -> int:
    from cutpaste.storage.datasets import materialize

    root = materialize(
        args.s3uri,
        args.category or None,
        endpoint_url=args.s3_endpoint,
        cache_dir=args.cache_dir,
        progress=show_progress(args.no_progress),
    )
    print(root)
    return 0


def _cmd_fetch_mvtec(args: argparse.Namespace) -> int:
    from cutpaste.storage.fetch import MVTEC_URL, fetch_mvtec

    added = fetch_mvtec(
        args.dir,
        url=args.url or MVTEC_URL,
        sha256=args.sha256,
        keep_archive=args.keep_archive,
        progress=show_progress(args.no_progress),
    )
    print(f"extracted into {args.dir}: {', '.join(added) or 'nothing new'}")
    if args.upload:
        args.local_dir, args.s3uri, args.workers = args.dir, args.upload, 8
        return _cmd_upload(args)
    return 0


def add_storage_commands(data_subparsers: Any) -> None:
    """Register the object-storage commands on the ``data`` sub-parsers (``add_subparsers()`` result)."""
    index = data_subparsers.add_parser("index", help="write the Parquet manifest of an MVTec-layout dataset in S3")
    index.add_argument("s3uri", metavar="S3URI", help="s3://bucket/prefix")
    _add_endpoint(index)
    index.set_defaults(func=_cmd_index)

    upload = data_subparsers.add_parser("upload", help="upload a local MVTec-layout dataset to S3, then index it")
    upload.add_argument("local_dir", metavar="LOCAL_DIR")
    upload.add_argument("s3uri", metavar="S3URI", help="s3://bucket/prefix")
    upload.add_argument("--workers", type=int, default=8, help="files uploaded at once (default 8)")
    _add_endpoint(upload)
    upload.set_defaults(func=_cmd_upload)

    pull = data_subparsers.add_parser(
        "materialize", help="fetch an S3 dataset into the node's cache and print its local MVTec-layout directory"
    )
    pull.add_argument("s3uri", metavar="S3URI", help="s3://bucket/prefix")
    pull.add_argument("--category", action="append", help="only this category (repeatable; default: all)")
    pull.add_argument("--cache-dir", help="default: $CUTPASTE_CACHE_DIR or ~/.cache/cutpaste")
    _add_endpoint(pull)
    pull.set_defaults(func=_cmd_materialize)

    fetch = data_subparsers.add_parser("fetch-mvtec", help="download and extract the official MVTec AD archive")
    fetch.add_argument("dir", metavar="DIR", help="extract here (the dataset root)")
    fetch.add_argument("--url", help="archive URL (default: the official one)")
    fetch.add_argument("--sha256", metavar="HEX", help="expected SHA-256 (default: the official archive's)")
    fetch.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive in DIR/.downloads")
    fetch.add_argument("--upload", metavar="S3URI", help="then upload the extracted dataset to this S3 prefix")
    _add_endpoint(fetch)
    fetch.set_defaults(func=_cmd_fetch_mvtec)
