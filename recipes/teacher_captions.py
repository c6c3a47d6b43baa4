"""The teacher of sequence-level knowledge distillation (Kim & Rush 2016): an ensemble of model files, decoded
with the whole recipe, captions every image of a split (the training split) once, into a JSONL file.

    python recipes/teacher_captions.py --model A.pt --model B.pt ... --data DATA --out teacher.jsonl \\
        [--split train] [--beam-size 5] [--set decode.KEY=VALUE ...] [--topk 10] [--batch 50] [--limit N]

The files decode as `captioner evaluate --model A.pt --model B.pt ... --set ...` decodes them: the same ensemble
(across encoders too), the same settings (decode.ensemble_mean, decode.flip, decode.consensus with
decode.consensus_k / consensus_weight, decode.length_penalty, decode.block_ngram, model.hard_inference, ...), the
same features of the split. One difference: consensus reranking never takes an image as its own neighbour (a
training image's own captions would choose its caption).

Output, one JSON object per line: a header {"header": true, "command", "models": [{"file", "sha256"}],
"settings", "split", "vocab" (the words the ids below stand for)}, then per image {"image", "view" (plain, or flip with decode.flip), "caption", "tokens" (word
ids of the first file's vocabulary), "score" (the beam's score), "topk"}. "topk" (with --topk K > 0): at each
position of the caption (each word, then the <end> after them) the K likeliest next words of the ensemble's
distribution, teacher-forced through the decoder that decoded it (with decode.flip: both views), as
{"ids": [[...] per position], "probs": [[...] per position]}, probabilities rounded to 4 decimals. The words beam
search bans (<pad>, <start>, <unk> with decode.ban_unk) are left out, not renormalised; n-gram blocking and the
repetition penalty are not applied.
An image that cannot be read gets {"image", "error"}.

Resumable: a rerun with the same models and settings reads the file, drops a last line cut short by a kill and
captions only the images not in it yet; every batch is appended and synced to the disk. Another header (other
model files or settings) is refused.
"""

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

from captioner import captioning as decoding
from captioner import model as models
from captioner import model_features as features
from captioner.checkpoint import load_models
from captioner.devices import module_device, pick_device
from captioner.errors import CaptionerError, file_error
from captioner.io import file_sha256

PROG = "recipes/teacher_captions.py"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True,
                   help="model file; repeat it for an ensemble (as captioner evaluate --model)")
    p.add_argument("--data", required=True, help="dataset (as captioner evaluate --data)")
    p.add_argument("--out", required=True, help="JSONL file to write, or to continue")
    p.add_argument("--split", default="train", help="split to caption (default train)")
    p.add_argument("--beam-size", type=_at_least(1), metavar="N", help="beam size (default: the first file's "
                   "decode.beam_size, or --set decode.beam_size=N)")
    p.add_argument("--max-len", type=_at_least(1), metavar="N", help="longest caption in words (default: the "
                   "first file's decode.max_len, or --set decode.max_len=N)")
    p.add_argument("--set", action="append", default=[], metavar="decode.KEY=VALUE",
                   help="decoding setting, as captioner evaluate --set (repeatable)")
    p.add_argument("--topk", type=_at_least(0), default=0, metavar="K",
                   help="also write the K likeliest next words at each position of each caption (default 0: none)")
    p.add_argument("--batch", type=_at_least(1), default=50, metavar="N",
                   help="images decoded, then written, at a time (default 50)")
    p.add_argument("--limit", type=_at_least(1), metavar="N", help="only the first N images of the split")
    p.add_argument("--cache", help="feature cache root (default $CAPTIONER_CACHE, else .cache/captioner in the "
                   "home folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while features are computed")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where decoding (and an encoder a model file carries) runs (default auto)")
    return p.parse_args(argv)


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse


def main(argv: list[str] | None = None) -> None:
    command = shlex.join(["python", *(sys.argv if argv is None else [PROG, *argv])])  # paths as given
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args, command)
    except CaptionerError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted (what is written stays; run the same command again to continue)", file=sys.stderr)
        raise SystemExit(130) from None


def run(args: argparse.Namespace, command: str) -> None:
    import torch

    out = Path(args.out)
    if out.is_dir():
        raise file_error(out, "is a folder; --out is the JSONL file to write")
    model = load_models(args.model).to(pick_device(args.device))
    if args.set:  # as captioner evaluate applies --set
        model = models.with_settings(model, args.set)
    beam_size, max_len = decoding.search_size(model, args.beam_size, args.max_len)
    header = {"header": True, "command": command,
              "models": [{"file": path, "sha256": file_sha256(path)} for path in args.model],
              "settings": settings(model, beam_size, max_len, args.topk), "split": args.split,
              "vocab": list(model.vocab.itos)}  # what the word ids of "tokens" and "topk" mean
    has_header, done = resume(out, header)
    if has_header and args.limit is None and split_images(args.data, args.split) <= done:
        print(f"all images of {args.split} in {out} already", file=sys.stderr)  # (before the features and the
        return  # consensus index are loaded: they take minutes)

    chosen, feats, failed = features.split_features(model, args.data, args.split, args.cache, args.limit,
                                                    not args.no_progress)
    reranker = SelfExcludingReranker(model, args.data, args.cache, not args.no_progress) \
        if model.config.decode.consensus else None
    errors = unreadable(args.data, args.split, [name for name in failed if name not in done])
    todo = [i for i, r in enumerate(chosen) if r.name not in done]
    total = len(done) + len(errors) + len(todo)
    out.parent.mkdir(parents=True, exist_ok=True)
    view = "flip" if model.config.decode.flip else "plain"
    print(f"{args.split}: {total} images; {len(done)} in {out} already, {len(errors)} unreadable, {len(todo)} to "
          "caption", file=sys.stderr)
    with open(out, "a", encoding="utf-8") as f:
        append(f, ([] if has_header else [header]) + errors)
        count, start = len(done) + len(errors), time.monotonic()
        for b in range(0, len(todo), args.batch):
            rows = todo[b : b + args.batch]
            batch = {k: v[torch.tensor(rows)] for k, v in feats.items()}
            names = [chosen[i].name for i in rows]
            if reranker:
                reranker.exclude_own(names)
            hyps = decoding.decode_batches(model, batch, beam_size, max_len, batch_size=len(rows),
                                           reranker=reranker)
            topk = next_word_topk(model, batch, [h.tokens for h in hyps], args.topk) if args.topk else None
            records = [{"image": name, "view": view, "caption": " ".join(model.vocab.decode(h.tokens)),
                        "tokens": list(h.tokens), "score": float(h.score)}
                       for name, h in zip(names, hyps, strict=True)]
            if topk:
                for record, (ids, probs) in zip(records, topk, strict=True):
                    record["topk"] = {"ids": ids, "probs": probs}
            append(f, records)
            count += len(rows)
            rate = (b + len(rows)) / max(time.monotonic() - start, 1e-9)
            print(f"{count}/{total} images, {rate:.2f} images/s, ETA {_duration((total - count) / rate)}",
                  file=sys.stderr, flush=True)
    print(f"all {total} images of {args.split} in {out}", file=sys.stderr)


def settings(model, beam_size: int, max_len: int, topk: int) -> dict:
    """What decides the captions and the top-k besides the model files: the decode settings (beam size and
    length as decoded), hard attention's context for each hard decoder, and K."""
    out = dataclasses.asdict(model.config.decode) | {"beam_size": beam_size, "max_len": max_len}
    hard = [c.model.hard_inference for _, c in model.parts() if c.model.type == "hard"]
    if hard:
        out["hard_inference"] = hard
    return out | {"topk": topk}


def resume(out: Path, header: dict) -> tuple[bool, set[str]]:
    """(whether ``out`` has its header, the images it has a line for). A last line without its newline (a kill
    in mid-write) is cut off; another header (other model files, settings or split) is an error."""
    if not out.is_file():
        return False, set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(out, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    lines = data[:end].decode("utf-8", errors="replace").splitlines()
    if not lines:
        return False, set()
    try:
        old = json.loads(lines[0])
    except json.JSONDecodeError:
        old = None
    if not isinstance(old, dict) or old.get("header") is not True:
        raise file_error(out, "not a teacher captions file (its first line is no header); choose another --out")
    problem = _mismatch(old, header)
    if problem:
        raise file_error(out, f"written with {problem}; use another --out, or the same models and settings")
    done = set()
    for n, line in enumerate(lines[1:], start=2):
        try:
            done.add(json.loads(line)["image"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise file_error(out, f"line {n} is not an image's record: {line[:60]!r}") from None
    return True, done


def _mismatch(old: dict, new: dict) -> str | None:
    """What differs between the header in the file and this run's, in words (None: nothing)."""
    if [m.get("sha256") for m in old.get("models", [])] != [m["sha256"] for m in new["models"]]:
        files = ", ".join(m.get("file", "?") for m in old.get("models", []))
        return f"other model files ({files}, or their contents differ)"
    if old.get("split") != new["split"]:
        return f"split {old.get('split')!r}, not {new['split']!r}"
    was, now = old.get("settings", {}), json.loads(json.dumps(new["settings"]))
    changed = [f"{k}: {was.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(was) | set(now))
               if was.get(k) != now.get(k)]
    return f"other settings ({'; '.join(changed)})" if changed else None


def append(f, records: list[dict]) -> None:
    """Append whole lines, then make sure they are on the disk."""
    if records:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def split_images(data: str, split: str) -> set[str]:
    """The names of the split's images."""
    from captioner.data.readers import load_dataset

    return {r.name for r in load_dataset(data).split(split)}


def unreadable(data: str, split: str, names: list[str]) -> list[dict]:
    """{"image", "error"} for the split's images that have no features, with the reason the image file gives."""
    from captioner.data.readers import load_dataset

    if not names:
        return []
    paths = {r.name: r.image for r in load_dataset(data).records if r.split == split}
    names = [n for n in names if n in paths]  # (a feature cache lists the failures of every split)
    _, errors = decoding.read_images([paths[n] for n in names])
    return [{"image": n, "error": err or "left out when the split's features were computed"}
            for n, err in zip(names, errors, strict=True)]


class SelfExcludingReranker:
    """The consensus reranker ``captioner evaluate`` decodes with (:func:`consensus_reranker`), except that an
    image of the index (a training image) is never one of its own neighbours."""

    def __init__(self, model, data, cache_root, progress: bool):
        self.reranker = features.consensus_reranker(model, data, cache_root, progress)
        first = model.sources[0] if model.sources else model  # whose features its index holds
        records, index = features._training_globals(first, data, cache_root, False)  # (its rows' images)
        if index.size(0) != self.reranker.index.size(0):
            raise RuntimeError("the consensus index and its training images differ in number")
        self.row = {r.name: i for i, r in enumerate(records)}
        self.exclude: list[list[int]] | None = None

    def exclude_own(self, names: list[str]) -> None:
        """The images of the next :meth:`choose`, in its order."""
        self.exclude = [[self.row[n]] if n in self.row else [] for n in names]

    def choose(self, feats, nbest, words, length_penalty):
        if self.exclude is None or len(self.exclude) != len(nbest):  # (one batch per decode_batches call)
            raise RuntimeError("exclude_own(names) must name the images of each decoded batch")
        return self.reranker.choose(feats, nbest, words, length_penalty, exclude=self.exclude)


def next_word_topk(model, feats: dict, captions: list[list[int]], k: int) -> list[tuple[list, list]]:
    """For each caption, the ``k`` likeliest next words (ids, probabilities rounded to 4 decimals) at each of
    its positions (after <start>, after each word), of the distribution of the decoder that decoded it
    (:func:`decoding_decoder`: with decode.flip, both views), fed the caption's words. The words beam search
    bans (<pad>, <start>, <unk> with decode.ban_unk) are left out, the others' probabilities kept as they are
    (not renormalised); n-gram blocking and the repetition penalty are not applied."""
    import torch

    decoder = decoding.decoding_decoder(model)
    device = module_device(model.decoder)
    banned = [decoder.pad_id, model.vocab.start_id, *model.config.decode.banned(model.vocab)]
    steps = max(len(c) for c in captions) + 1
    inputs = torch.full((len(captions), steps), model.vocab.end_id, dtype=torch.long)  # [B, T] word fed at t
    inputs[:, 0] = model.vocab.start_id
    for i, c in enumerate(captions):
        inputs[i, 1 : len(c) + 1] = torch.tensor(c, dtype=torch.long)
    ids, probs = [], []
    with torch.inference_mode():
        ctx = decoder.encode({name: v.to(device).float() for name, v in feats.items()})
        state = decoder.init_state(ctx)
        for t in range(steps):
            logp, state, _ = decoder.step(ctx, state, inputs[:, t].to(device))  # [B, V]
            logp[:, banned] = float("-inf")  # words beam search never chooses (as it bans them)
            p, i = logp.exp().topk(min(k, logp.size(1) - len(set(banned))), dim=1)  # [B, k]
            ids.append(i.cpu())
            probs.append(p.float().cpu())
    ids_t, probs_t = torch.stack(ids, 1), torch.stack(probs, 1)  # [B, T, k]
    out = []
    for b, c in enumerate(captions):  # positions 0..len(c): after <start>, after each word
        rounded = [[round(x, 4) for x in row] for row in probs_t[b, : len(c) + 1].tolist()]
        out.append((ids_t[b, : len(c) + 1].tolist(), rounded))
    return out


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


if __name__ == "__main__":
    main()
