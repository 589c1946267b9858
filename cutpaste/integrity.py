"""Model files are data, never code: read tensors and plain values only, and check each file against the
SHA-256 recorded when it was written.

A bundle, checkpoint or ensemble member travels through buckets and registries that many people can
write to. ``torch.load(weights_only=False)`` would run whatever a replaced file's pickle asks for on every
node that loads it; ``weights_only=True`` refuses anything but tensors, containers and primitives. The
digest catches the rest: a truncated upload, a flipped byte, a file swapped for another valid one.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cutpaste.errors import ModelBundleError

_CHUNK = 1 << 20
# What torch's weights-only unpickler names when a file asks for a callable or class it does not allow.
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(directory: Path, names: list[str]) -> dict[str, str]:
    """``{relative name: sha256}`` for the files a record vouches for."""
    return {name: sha256_file(directory / name) for name in names}


def load_weights(path: str | Path, *, kind: str) -> Any:
    """``torch.load`` restricted to tensors and plain values; anything else is refused by name."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        wanted = _UNSAFE_GLOBAL.search(str(exc))
        if wanted is None:
            raise ModelBundleError(f"{kind} {path} is unreadable: not a torch file, or a damaged one") from None
        raise ModelBundleError(
            f"{kind} {path} asks for {wanted.group(1)} when loaded, which could run code: refused. Load only "
            "files you trust, and re-export this one from its source with this cutpaste (bundles it writes hold "
            "tensors and plain values only)"
        ) from None
    except Exception as exc:
        raise ModelBundleError(f"{kind} {path} is unreadable or half written ({type(exc).__name__}: {exc})") from None


def verify_file(path: Path, expected: str, *, recorded_in: str) -> None:
    """Refuses ``path`` unless its SHA-256 is ``expected``; the message says where the record came from."""
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise ModelBundleError(f"{path} cannot be read to check its SHA-256 ({exc})") from None
    if actual != expected.lower():
        raise ModelBundleError(
            f"{path} changed after it was written: SHA-256 {actual[:16]}... does not match {expected[:16]}... "
            f"recorded in {recorded_in}; refused"
        )


def verify_files(directory: Path, record: Mapping[str, str], *, recorded_in: str) -> None:
    """Checks every file the record names; names may not leave ``directory``."""
    root = directory.resolve()
    for name, expected in sorted(record.items()):
        path = (directory / name).resolve()
        if root not in path.parents:
            raise ModelBundleError(f"{recorded_in} names {name!r}, outside {directory}: refused")
        if not path.is_file():
            raise ModelBundleError(f"{recorded_in} records {name} but {path} does not exist")
        verify_file(path, expected, recorded_in=recorded_in)
