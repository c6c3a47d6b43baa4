"""`captioner evaluate` end to end: 1000 val images from cached features, beam 5, every metric but METEOR.

    python benchmarks/evaluate.py --model M.pt    # Flickr8k val (../shared/data/flickr8k), features cached
    python benchmarks/evaluate.py                 # the model shipped in the package: it carries its own
                                                  # (fine-tuned) encoder, so the images are encoded too
                                                  # (no feature cache): not the setup of the target below
    python benchmarks/evaluate.py --quick         # 100 synthetic images, an untrained model (a smoke run)

Runs the real command in a subprocess and times all of it (start-up, loading, beam search, PTB
tokenisation, BLEU, ROUGE-L, CIDEr-D). Target: <= 60 s for 1000 images.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import matmul_rate

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


def untrained_synth_model(tmp: Path) -> tuple[Path, Path]:
    """A synthetic dataset and a randomly initialised soft-attention model for it (captions run to max_len)."""
    from captioner.checkpoint import save_model
    from captioner.config import load_config
    from captioner.data.readers import load_dataset
    from captioner.data.synth import make_synth
    from captioner.data.vocab import Vocab
    from captioner.decoders import build_decoder
    from captioner.features import config_encoder
    from captioner.model import CaptionModel

    data = make_synth(tmp / "synth", n_train=100, n_val=100, n_test=10)
    cfg = load_config("synth_soft")
    vocab = Vocab.build([c for r in load_dataset(data).split("train") for c in r.captions])
    enc = config_encoder(cfg).describe()
    decoder = build_decoder(cfg.model, len(vocab), enc["global_dim"], enc["grid_dim"])
    return save_model(tmp / "model.pt", CaptionModel(decoder.eval(), vocab, cfg, enc)), data


def packaged_model() -> Path | None:
    from captioner.checkpoint import PRETRAINED

    return PRETRAINED if PRETRAINED.is_file() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", type=Path)
    p.add_argument("--data", type=Path, default=FLICKR8K)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--beam-size", type=int, default=5)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ)
        if args.quick:
            model, data = untrained_synth_model(tmp)
            env["CAPTIONER_CACHE"] = str(tmp / "cache")
            n = min(args.images, 100)
        else:
            model, data, n = args.model or packaged_model(), args.data, args.images
            if model is None:
                sys.exit("no model: pass --model (e.g. a run's model.pt), or use --quick")
        cmd = [sys.executable, "-m", "captioner.cli", "evaluate", "--model", str(model), "--data", str(data), "--split", "val",
               "--beam-size", str(args.beam_size), "--limit", str(n), "--no-meteor", "--no-progress",
               "--out", str(tmp / "report.json")]
        if args.quick:  # extract the tiny features first, so that only evaluation is timed
            subprocess.run(cmd[:-2] + ["--limit", "1"], env=env, check=True, capture_output=True)
        rate = matmul_rate()
        start = time.perf_counter()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if run.returncode != 0:
            sys.exit(f"captioner evaluate failed:\n{run.stderr}")
        report = json.loads((tmp / "report.json").read_text())

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lengths = [len(c["caption"].split()) for c in report["captions"]]
    print("captioner " + " ".join(cmd[4:-2]))
    print(f"{report['images']} images, beam {args.beam_size}: {elapsed:.1f} s wall "
          f"({elapsed / report['images'] * 1000:.0f} ms/image); mean caption {sum(lengths) / len(lengths):.1f} words")
    print("metrics: " + ", ".join(f"{k} {v * 100:.1f}" for k, v in report["metrics"].items()))
    print(f"matmul rate in this run {rate / 1e9:.1f} GFLOP/s; peak RSS of the command {peak:.0f} MB")


if __name__ == "__main__":
    main()
