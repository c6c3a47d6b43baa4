"""Does int8 quantisation of the encoder pay? ONNX Runtime's static quantisation (QDQ, int8 weights per
channel, uint8 activations calibrated on 64 training images) against the float32 export of the shipped model's
encoder: images/s on 200 val photos (batch 32, 2 threads), the grid features' relative error, and how many of
the 200 captions stay the same.

    python experiments/onnx_int8.py --data ../shared/data/flickr8k
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

import captioner
from captioner.data.images import load_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a dataset in the reference layout")
    args = p.parse_args()
    cap = captioner.load(device="cpu", backend="onnx")
    enc = cap.encoder

    def inputs(split: str, n: int) -> np.ndarray:
        names = (args.data / "splits" / f"{split}.txt").read_text().split()[:n]
        return np.stack([enc.preprocess(load_image(args.data / "images" / name)).numpy() for name in names])

    calibration, photos = inputs("train", 64), inputs("val", 200)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared, int8 = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(enc.path), str(prepared))
        quantize_static(str(prepared), str(int8), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        features = {}
        for name, path in (("float32", enc.path), ("int8", int8)):
            runtime = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            runtime.run(None, {"images": photos[:32]})  # warm-up
            start = time.perf_counter()
            outs = [runtime.run(None, {"images": photos[i : i + 32]}) for i in range(0, len(photos), 32)]
            print(f"{name}: {len(photos) / (time.perf_counter() - start):.1f} images/s")
            features[name] = {"global": torch.from_numpy(np.concatenate([o[0] for o in outs])),
                              "grid": torch.from_numpy(np.concatenate([o[1] for o in outs]))}
    a, b = features["float32"]["grid"], features["int8"]["grid"]
    same = sum(x.text == y.text for x, y in zip(cap.decode(features["float32"]), cap.decode(features["int8"]),
                                                strict=True))
    print(f"grid features' relative error {float((b - a).norm() / a.norm()):.3f}; identical captions "
          f"{same}/{len(photos)}")


if __name__ == "__main__":
    main()
