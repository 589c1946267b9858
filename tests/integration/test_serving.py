"""A registered champion, loaded and served as users do: models-from-code (nothing of ours unpickled), the
bundle's digest pinned, ``mlflow models serve`` on loopback answering scores and maps, and a 4xx with a
clear message for a wrong shape, a wrong dtype or a malformed body, never a crash or a hang."""

from __future__ import annotations

import json
import os
import random
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from cutpaste.data.images import load_images
from cutpaste.data.layout import list_samples
from cutpaste.data.synth import generate_dataset
from cutpaste.detector import BUNDLE_NAME, SUMMARY_NAME, Detector, embed_images
from cutpaste.integrity import sha256_file
from cutpaste.model.network import build_model
from cutpaste.presets import preset
from cutpaste.scoring.gaussian import GaussianDensity
from infra.local.services import VENV_BIN, free_port, stop_process_group, wait_http
from pipelines import tracking
from pipelines.pyfunc_model import TAG_SHA256, log_detector_model

pytestmark = pytest.mark.integration

CATEGORY = "synth_disc"
SIZE = 32
FUZZ_BODIES = 120


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _detector(root: Path) -> Detector:
    images = load_images([s.path for s in list_samples(root, CATEGORY, "train")], SIZE)
    config = preset("ci").override({"image_size": SIZE})
    torch.manual_seed(0)
    model = build_model(config).eval()
    density = GaussianDensity.fit(embed_images(model, images, batch_size=8, size=SIZE))
    return Detector(model=model, density=density, threshold=1.0, config=config, category=CATEGORY)


def _register(work: Path, detector: Detector, name: str) -> tuple[str, str]:
    """Logs and registers the detector the way the benchmark does; returns (tracking URI, digest)."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = tracking.ensure_experiment(client, "serving", work / "artifacts")
    run_id = client.create_run(experiment).info.run_id
    bundle = work / f"bundle-{name}"
    detector.save(bundle)
    model_uri, digest = log_detector_model(bundle, run_id=run_id)
    tracking.register_champion(
        client, name, run_id, model_uri=model_uri, aliases=("champion",), tags={TAG_SHA256: digest}
    )
    tracking.finish_run(client, run_id)
    return uri, digest


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("serving")
    root = work / "data"
    generate_dataset(root, categories=[CATEGORY], size=SIZE, seed=5, train_count=8, test_good=2, test_defect_per_type=1)
    detector = _detector(root)
    uri, digest = _register(work, detector, f"cutpaste-{CATEGORY}")
    image = np.asarray(
        torch.randint(0, 255, (SIZE, SIZE, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    )
    yield {"work": work, "uri": uri, "digest": digest, "detector": detector, "image": image}
    mlflow.set_tracking_uri(None)


def test_the_registered_model_loads_without_unpickling_and_scores_like_the_detector(stack, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    client = MlflowClient(stack["uri"])
    version = client.get_model_version_by_alias(f"cutpaste-{CATEGORY}", "champion")
    assert version.tags[TAG_SHA256] == stack["digest"]
    (stack["work"] / "dl").mkdir()
    served = mlflow.pyfunc.load_model(f"models:/cutpaste-{CATEGORY}@champion", dst_path=str(stack["work"] / "dl"))
    prediction = served.predict(stack["image"][None])
    expected = stack["detector"].score(torch.from_numpy(stack["image"]).permute(2, 0, 1)[None]).item()
    assert prediction["score"].iloc[0] == pytest.approx(expected, rel=1e-6)
    maps = served.predict(stack["image"][None], params={"maps": True})
    assert np.asarray(maps["map"].iloc[0]).shape == (SIZE, SIZE)


def test_a_payload_planted_in_the_registered_bundle_never_runs(stack, tmp_path, monkeypatch):
    work = tmp_path
    _register(work, stack["detector"], "cutpaste-planted")
    bundle = next((work / "artifacts").rglob(BUNDLE_NAME))
    marker = tmp_path / "pwned"
    state = torch.load(bundle, weights_only=True)
    state["meta"] = Payload(marker)
    torch.save(state, bundle)
    record = json.loads((bundle.parent / SUMMARY_NAME).read_text())
    record["files"][BUNDLE_NAME] = sha256_file(bundle)  # the record beside it rewritten too
    (bundle.parent / SUMMARY_NAME).write_text(json.dumps(record))
    (tmp_path / "dl").mkdir()
    with pytest.raises(Exception, match=rf"{BUNDLE_NAME} changed after it was written.*pinned"):
        mlflow.pyfunc.load_model("models:/cutpaste-planted@champion", dst_path=str(tmp_path / "dl"))
    assert not marker.exists()
    mlflow.set_tracking_uri(stack["uri"])


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _malformed_bodies(seed: int, image: np.ndarray) -> list[bytes]:
    rng = random.Random(seed)
    valid = json.dumps({"inputs": image[None].tolist()})
    bodies = [
        b"",
        b"{",
        b"null",
        b"[]",
        b'{"inputs": null}',
        b'{"inputs": "an image"}',
        b'{"inputs": [[[[1, 2]]]]}',
        b'{"inputs": [[[[1, 2, 3]]]], "params": {"maps": "yes please"}}',
        b'{"inputs": [[[[300, -1, 3]]]]}',
        b'{"instances": {"a": 1}}',
        b'{"dataframe_split": {"columns": ["x"], "data": [[1]]}}',
        b'{"inputs": [[[[1e309, 1, 1]]]]}',
        json.dumps({"inputs": [[[[1, 2, 3]] * 3] * 2, [[[1, 2, 3]] * 2]]}).encode(),  # ragged
        b"\xff\xfe\x00garbage",
    ]
    while len(bodies) < FUZZ_BODIES:
        cut = rng.randrange(1, len(valid))
        mutated = list(valid[:cut] + valid[cut + rng.randrange(0, 40) :])
        for _ in range(rng.randrange(1, 4)):
            mutated.insert(rng.randrange(len(mutated)), rng.choice('{}[],:"x-e.9 '))
        bodies.append("".join(mutated).encode())
    return bodies


def test_mlflow_models_serve_answers_scores_maps_and_clear_4xx(stack):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": stack["uri"],
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # it starts uvicorn by name
    }
    log = open(stack["work"] / "serve.log", "wb")  # noqa: SIM115 (closed below)
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/cutpaste-{CATEGORY}@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", 180, process)
        image = stack["image"]
        status, body = _post(f"{url}/invocations", json.dumps({"inputs": image[None].tolist()}).encode())
        assert status == 200, body
        expected = stack["detector"].score(torch.from_numpy(image).permute(2, 0, 1)[None]).item()
        assert json.loads(body)["predictions"][0]["score"] == pytest.approx(expected, rel=1e-6)
        status, body = _post(
            f"{url}/invocations", json.dumps({"inputs": image[None].tolist(), "params": {"maps": True}}).encode()
        )
        assert status == 200, body
        assert np.asarray(json.loads(body)["predictions"][0]["map"]).shape == (SIZE, SIZE)

        status, body = _post(f"{url}/invocations", json.dumps({"inputs": image[None, :, :, :2].tolist()}).encode())
        # MLflow's schema check (from the signature) or the model's own: either names the shape it wants.
        assert 400 <= status < 500 and ("(-1, -1, -1, 3)" in body or "(B, H, W, 3)" in body), (status, body[:300])
        floats = (image[None] / 255.0).tolist()
        status, body = _post(f"{url}/invocations", json.dumps({"inputs": floats}).encode())
        assert 400 <= status < 500 and ("uint8" in body or "float" in body), (status, body[:300])

        answers = [_post(f"{url}/invocations", b)[0] for b in _malformed_bodies(0, image)]
        assert all(400 <= s < 500 for s in answers), sorted(set(answers))
        assert process.poll() is None
        status, _ = _post(f"{url}/invocations", json.dumps({"inputs": image[None].tolist()}).encode())
        assert status == 200  # still serving after the fuzz
    finally:
        stop_process_group(process)
        log.close()
