"""When does an adaptive-attention model look? Its sentinel weight beta_t for each word (Lu et al. 2017, Fig. 4).

    python experiments/sentinel_words.py RUN/model.pt [RUN2/model.pt ...] --data ../shared/data/flickr8k

Teacher-forced on every reference caption of the split (val by default), the decoder gives, for each word
y_t, beta_t: the share of attention on the visual sentinel rather than the grid (1 - beta_t is "how much it
looked", as the attention figure shows). Printed per model: the mean beta_t over all words, then the words
used at least --min-uses times ranked by their mean beta_t, the most and least looked-at. Lu et al. found
beta_t high for words the language model predicts ("of", "a", "the") and low for the words that name what is
in the image. A sentinel that never opened shows beta_t near 0 for every word: the decoder then computes
spatial attention with a gate it does not use. Writes every word's mean with --out.
"""

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from captioner.checkpoint import load_model  # noqa: E402
from captioner.model_features import split_features  # noqa: E402


def padded(ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """The captions' word ids as one [B, T] tensor, padded on the right."""
    out = torch.full((len(ids), max(map(len, ids))), pad_id, dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row)
    return out


def sentinel_by_word(model, records, feats: dict, batch_size: int = 100) -> dict[str, list[float]]:
    """beta_t of every word of every reference caption, teacher-forced, grouped by word (``<end>`` included)."""
    decoder, vocab = model.decoder.eval(), model.vocab
    device = next(decoder.parameters()).device
    by_word = defaultdict(list)
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            batch = {k: torch.as_tensor(v[start : start + len(chunk)]).float().to(device) for k, v in feats.items()}
            most = max(len(r.captions) for r in chunk)
            for c in range(most):  # the c-th reference of each image (images with fewer repeat their last)
                ids = [vocab.encode(r.captions[min(c, len(r.captions) - 1)]) for r in chunk]
                alphas = decoder.teacher_forcing(batch, padded(ids, vocab.pad_id).to(device))["alphas"]  # [B, T-1, L]
                beta = 1 - alphas.sum(-1).cpu()  # [B, T-1]
                for i, row in enumerate(ids):
                    for t, word_id in enumerate(row[1:]):  # the word predicted at step t
                        by_word[vocab.itos[word_id]].append(float(beta[i, t]))
    return by_word


def report(model_path: Path, data: Path, split: str, min_uses: int, show: int) -> dict:
    model = load_model(model_path)
    if not model.decoder.has_sentinel:
        sys.exit(f"{model_path}: a {model.config.model.type} model has no visual sentinel")
    records, feats, _ = split_features(model, data, split, progress=False)
    by_word = sentinel_by_word(model, records, feats)
    means = {w: sum(v) / len(v) for w, v in by_word.items()}
    uses = {w: len(v) for w, v in by_word.items()}
    overall = sum(sum(v) for v in by_word.values()) / sum(uses.values())
    ranked = sorted((w for w in means if uses[w] >= min_uses), key=means.get, reverse=True)
    print(f"{model_path}: mean beta_t {overall:.3g} over {sum(uses.values())} words of {len(records)} {split} "
          f"images; {len(ranked)} words used {min_uses}+ times")
    for title, words in (("sentinel most (looked least)", ranked[:show]), ("looked most", ranked[-show:][::-1])):
        print(f"  {title}: " + ", ".join(f"{w} {means[w]:.2g}" for w in words))
    return {"model": str(model_path), "split": split, "mean_beta": overall,
            "words": {w: {"beta": means[w], "uses": uses[w]} for w in sorted(means, key=means.get, reverse=True)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "flickr8k")
    p.add_argument("--split", default="val")
    p.add_argument("--min-uses", type=int, default=100, help="rank only words used this often (default 100)")
    p.add_argument("--show", type=int, default=12, help="words shown at each end of the ranking (default 12)")
    p.add_argument("--out", type=Path, help="JSON report: every word's mean beta_t and uses")
    args = p.parse_args()
    reports = [report(m, args.data, args.split, args.min_uses, args.show) for m in args.models]
    if args.out:
        from captioner.io import write_json_atomic

        write_json_atomic(args.out, reports)


if __name__ == "__main__":
    main()
