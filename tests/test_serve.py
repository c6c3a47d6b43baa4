"""The web demo's JSON API: good uploads and samples, and every bad request a clear 4xx JSON error."""

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captioner.checkpoint import load_models, save_model
from captioner.errors import CaptionerError
from captioner.serve.app import create_app
from conftest import untrained_model_file


def png(size=(120, 80), mode="RGB", colour=None) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    kinds = ("soft", "hard", "nic", "spatial", "adaptive", "transformer")
    models = {kind: untrained_model_file(root / f"{kind}.pt", kind) for kind in kinds}
    models["hard_argmax"] = untrained_model_file(root / "hard_argmax.pt", "hard", hard_inference="argmax")
    models["pair"] = save_model(root / "pair.pt", load_models([models["soft"], models["nic"]]))  # one file
    with TestClient(create_app(models, max_upload_mb=0.5, max_pixels=4_000_000)) as c:
        yield c


def caption(client, files=None, **fields):
    return client.post("/api/caption", files=files, data={k: str(v) for k, v in fields.items()})


def test_page_models_and_samples(client):
    page = client.get("/")
    assert page.status_code == 200 and "captioner" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    models = client.get("/api/models").json()
    assert models["default"] == "soft"
    assert all(m["beam_size"] == client.app.state.models[m["name"]].model.config.decode.beam_size
               for m in models["models"])  # the page offers each model's own beam size and then sends none
    samples = client.get("/api/samples").json()["samples"]
    assert "cat.jpg" in samples
    assert client.get(f"/samples/{samples[0]}").headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize("kind", ["soft", "hard", "hard_argmax", "nic", "spatial", "adaptive", "transformer"])
def test_caption_an_upload_with_each_model(client, kind):
    r = caption(client, files={"file": ("photo.png", png(), "image/png")}, model=kind, beam_size=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == kind and body["beam_size"] == 3 and body["width"] == 120
    assert body["tokens"] and body["caption"] == " ".join(body["tokens"])
    assert body["preview"].startswith("data:image/jpeg;base64,")
    if kind == "nic":
        assert body["attention"] is None and body["grid"] is None
    else:  # one g x g map per word (the tiny encoder's grid is 4 x 4)
        assert body["grid"] == 4 and len(body["attention"]) == len(body["tokens"])
        # each map sums to 1, but adaptive attention's, which sums to how much the word looked (1 - beta)
        looked = body["looked"] or [1.0] * len(body["tokens"])
        assert all(len(a) == 16 and abs(sum(a) - s) < 1e-3 for a, s in zip(body["attention"], looked, strict=True))
    assert (body["looked"] is not None) == (kind == "adaptive")
    assert (body["locations"] is not None) == (kind == "hard_argmax")  # the expected context uses no one cell
    if kind == "hard_argmax":
        assert len(body["locations"]) == len(body["tokens"])


def test_an_ensemble_file_is_one_model_of_the_demo(client):
    r = caption(client, files={"file": ("photo.png", png(), "image/png")}, model="pair", beam_size=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_type"] == "ensemble of 2: soft + nic" and body["tokens"]
    assert len(body["attention"]) == len(body["tokens"])  # the attention member's map


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_odd_but_valid_images_are_captioned(client, mode):
    buf = io.BytesIO()
    Image.new(mode, (33, 500)).save(buf, format="TIFF" if mode == "CMYK" else "PNG")
    r = caption(client, files={"file": ("odd", buf.getvalue(), "application/octet-stream")})
    assert r.status_code == 200, r.text


def test_caption_a_sample(client):
    r = caption(client, sample="cat.jpg", beam_size=1)
    assert r.status_code == 200 and r.json()["source"] == "cat.jpg"
    own = caption(client, sample="cat.jpg").json()  # no beam_size: the model's own
    assert own["beam_size"] == client.app.state.models[own["model"]].model.config.decode.beam_size


BAD = [
    ({"files": {"file": ("notes.jpg", b"hello, I am text", "image/jpeg")}}, 400, "not an image"),
    ({"files": {"file": ("empty.png", b"", "image/png")}}, 400, "empty"),
    ({"files": {"file": ("cut.png", png()[:60], "image/png")}}, 400, "cut.png"),
    ({"files": {"file": ("huge.png", b"\0" * 600_000, "image/png")}}, 413, "too large"),
    ({"files": {"file": ("bomb.png", png((2500, 2000), "1"), "image/png")}}, 413, "too large"),
    ({"sample": "../../etc/passwd"}, 404, "unknown sample"),
    ({"sample": "nope.jpg"}, 404, "unknown sample"),
    ({"sample": "cat.jpg", "model": "gpt"}, 404, "unknown model"),
    ({"sample": "cat.jpg", "beam_size": "0"}, 422, "beam_size"),
    ({"sample": "cat.jpg", "beam_size": "five"}, 422, "beam_size"),
    ({}, 400, "send an image"),
]


@pytest.mark.parametrize("request_args, status, needle", BAD)
def test_bad_requests_get_a_clear_4xx_json_error(client, request_args, status, needle):
    files = request_args.pop("files", None) if "files" in request_args else None
    r = caption(client, files=files, **request_args)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_malformed_bodies_and_unknown_routes_are_json_4xx(client):
    r = client.post("/api/caption", content=b"--xyz\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    r = client.post("/api/caption", content=b"x" * 1_000_000, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and "too large" in r.json()["error"]
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_missing_model_file_is_refused_at_start(tmp_path):
    with pytest.raises(CaptionerError, match="no such model file"):
        create_app({"x": tmp_path / "missing.pt"})


def test_requests_arriving_together_are_captioned_as_one_batch(tmp_path):
    """Batcher: six requests at once take fewer than six calls of the Captioner, and each gets the caption it
    would get alone."""
    from concurrent.futures import ThreadPoolExecutor

    import captioner
    from captioner.serve.app import Batcher
    from conftest import untrained_model_file

    cap = captioner.load(untrained_model_file(tmp_path / "m.pt"), device="cpu", backend="torch")
    images = [Image.new("RGB", (40, 30), (40 * i, 200 - 30 * i, 90)) for i in range(6)]
    alone = [cap(img, beam_size=3).text for img in images]
    calls = []
    real = cap.__call__

    class Counting:
        def __call__(self, items, **settings):
            calls.append(len(items))
            return real(items, **settings)

    batcher = Batcher(cap, wait=0.2)
    batcher.cap = Counting()
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda img: batcher.caption(img, 3).text, images))
    assert together == alone and len(calls) < 6 and sum(calls) == 6
