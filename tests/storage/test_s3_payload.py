"""An object in S3 is data behind the node cache: a pickle payload planted as a dataset image is refused by
name when the cache checks what it fetched, and never runs (its marker file is never created)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from cutpaste.errors import DataError
from cutpaste.storage import index, materialize


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_planted_as_an_image_is_refused_and_never_runs(s3, uploaded, synth_root, tmp_path):
    category = sorted(p.name for p in synth_root.iterdir())[0]
    bucket, prefix = uploaded.removeprefix("s3://").split("/", 1)
    key = f"{prefix}/{category}/train/good/000.png"
    marker = tmp_path / "pwned"
    s3.client.put_object(Bucket=bucket, Key=key, Body=pickle.dumps(Payload(marker)))
    index(uploaded)  # the manifest now vouches for the replaced object, as a careless re-index would
    with pytest.raises(DataError, match=rf"{key} is not a decodable image"):
        materialize(uploaded, [category])
    assert not marker.exists()
