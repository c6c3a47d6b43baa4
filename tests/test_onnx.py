"""The encoder run by ONNX Runtime: exported once, the same features and captions as PyTorch's."""

import json

import pytest
import torch

from captioner.cli import main
from captioner.data.synth import make_synth
from captioner.encoders.onnx import onnx_available
from conftest import carrying_encoder_file, untrained_model_file

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed (pip install 'captioner[onnx]')")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    photos = sorted((make_synth(root / "synth", n_train=12, n_val=2, n_test=2, size=32) / "images").glob("*.png"))
    model = untrained_model_file(root / "m.pt")
    return root, photos, model, carrying_encoder_file(model, root / "carrying.pt")


def test_onnx_features_and_captions_equal_torchs(setup, monkeypatch):
    import captioner
    from captioner.captioning import encode_images
    from captioner.data.images import load_image

    root, photos, _, carrying = setup
    monkeypatch.setenv("CAPTIONER_CACHE", str(root / "cache"))
    on_torch = captioner.load(carrying, device="cpu", backend="torch")
    on_onnx = captioner.load(carrying, device="cpu", backend="onnx")
    images = [load_image(p) for p in photos]
    a, b = encode_images(on_torch.encoder, images), encode_images(on_onnx.encoder, images)
    for key in ("global", "grid"):
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4)
    assert [c.text for c in on_onnx(photos)] == [c.text for c in on_torch(photos)]
    assert list((root / "cache" / "onnx").iterdir())  # exported once into the cache, reused next time
    again = captioner.load(carrying, device="cpu", backend="onnx")
    assert again.encoder.path == on_onnx.encoder.path


def test_export_writes_the_encoder_and_its_manifest(setup, tmp_path, capsys):
    _, _, model, _ = setup
    main(["export", str(model), "--onnx", str(tmp_path / "exported")])
    manifest = json.loads((tmp_path / "exported" / "manifest.json").read_text())
    assert manifest["encoder.onnx"]["file"] == "encoder.onnx" and len(manifest["encoder.onnx"]["sha256"]) == 64
    assert manifest["preprocessing"]["input_size"] == manifest["encoder"]["input_size"]
    from captioner.encoders.onnx import check_export

    (tmp_path / "exported" / "encoder.onnx").write_bytes(b"tampered")
    with pytest.raises(Exception, match="not the exported file its manifest names"):
        check_export(tmp_path / "exported")


def test_the_cli_backends_give_the_same_captions(setup, capsys, monkeypatch):
    root, photos, model, _ = setup
    monkeypatch.setenv("CAPTIONER_CACHE", str(root / "cache"))
    outputs = []
    for backend in ("torch", "onnx"):
        main(["caption", "--model", str(model), "--backend", backend, *map(str, photos)])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == len(photos)
