"""The ``captioner`` command: synth | prepare | features | train | evaluate | compare | caption | serve | export.

Every problem with the user's input ends as one line on stderr (``error: <file>: <problem>``), exit code 2.
"""

import argparse
import logging
import sys
from pathlib import Path

from captioner.errors import CaptionerError, file_error

log = logging.getLogger("captioner")
FEW_IMAGES = 8  # --backend auto captions fewer images than this with torch (no ONNX Runtime start-up)

EPILOG = """examples:
  captioner synth --out data/synth
  captioner train --config synth_soft --data data/synth --out runs/synth_soft
  captioner evaluate --model runs/synth_soft/model.pt --data data/synth --split test --beam-size 5
  captioner evaluate --model runs/b/model.pt --data data/synth --out b.json   (and a.json from model a)
  captioner compare a.json b.json                  (is b better than a, or is the gap noise?)
  captioner caption --model runs/synth_soft/model.pt photo1.jpg photo2.png
  captioner caption photo.jpg                      (the model shipped with captioner)
  captioner caption photo.jpg --out shown/        (captioned image + per-word attention figure)
  captioner serve                                  (web demo on http://127.0.0.1:8000/)
  captioner export runs/soft_lite0/model.pt small.pt --half
  captioner export runs/a/model.pt runs/b/model.pt ens.pt --half --int8-decoder   (an ensemble in one file)
"""


def cmd_synth(args) -> None:
    from captioner.data.synth import make_synth

    out = make_synth(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, size=args.size,
                     seed=args.seed)
    print(f"synthetic dataset in {out}")


def cmd_prepare(args) -> None:
    from captioner.data.readers import load_dataset
    from captioner.data.vocab import Vocab
    from captioner.io import write_json_atomic

    ds = load_dataset(args.data, images=args.images)
    n_caps = sum(len(r.captions) for r in ds.records)
    print(f"{ds.source}: {len(ds.records)} images, {n_caps} captions, splits {ds.splits()}")
    train = [c for r in ds.split("train") for c in r.captions]
    vocab = Vocab.build(train, min_freq=args.min_word_freq)
    print(f"vocabulary: {len(vocab)} words with min_word_freq={args.min_word_freq} (train split)")
    if args.out:
        out = Path(args.out)
        write_json_atomic(out / "dataset.json", {"images": [
            {"filename": r.image.name, "filepath": str(r.image.parent), "split": r.split,
             "sentences": [{"raw": raw, "tokens": tok} for raw, tok in zip(r.captions_raw, r.captions, strict=True)]}
            for r in ds.records]})
        vocab.save(out / "vocab.json")
        print(f"wrote {out / 'dataset.json'} and {out / 'vocab.json'}")


def cmd_features(args) -> None:
    from captioner.config import load_config
    from captioner.features import load_features

    cfg = load_config(args.config, args.set)
    _, records, encoder, cache = load_features(cfg, args.data, args.cache, progress=not args.no_progress,
                                               device=args.device)
    d = encoder.describe()
    print(f"{d['name']} ({d['weights']}, {d['input_size']} px) features of {len(cache.names)} images: "
          f"global {d['global_dim']}, grid {d['grid_size']}x{d['grid_size']}x{d['grid_dim']}; "
          f"{len(cache.failed)} failed; in {cache.directory}")


def cmd_train(args) -> None:
    from captioner.config import load_config, resolve_config_path
    from captioner.training.train import train

    cfg = load_config(args.config, args.set)
    out = args.out or Path("runs") / resolve_config_path(args.config).stem
    path = train(cfg, args.data, out, cache_root=args.cache, resume=args.resume, progress=not args.no_progress)
    print(f"model written to {path}")


def captioner_from_args(args, images: int | None = None):
    """The Captioner of --model (an ensemble when repeated; the shipped model when none), --member, --device,
    --backend, --set and (caption, serve) --consensus. ``images``: how many are to be captioned, when known
    (--backend auto keeps torch for a few, where ONNX Runtime's start would cost more than it saves)."""
    from captioner.api import load
    from captioner.checkpoint import default_model_path
    from captioner.model import with_settings

    backend = args.backend
    if backend == "auto" and images is not None and images < FEW_IMAGES:
        backend = "torch"
    cap = load(args.model or [default_model_path()], device=args.device, member=args.member, backend=backend,
               consensus=getattr(args, "consensus", None))
    if args.set:  # decoding settings for this run (n-gram blocking, length penalty, hard attention's context)
        with_settings(cap.model, args.set)
    return cap


def cmd_evaluate(args) -> None:
    cap = captioner_from_args(args)
    metrics = ("bleu", "rouge", "cider") if args.no_meteor else ("bleu", "meteor", "rouge", "cider")
    report = cap.evaluate(args.data, args.split, beam_size=args.beam_size, max_len=args.max_len,
                          cache_root=args.cache, out=args.out, tokenizer=args.tokenizer, metrics=metrics,
                          limit=args.limit, progress=not args.no_progress, report_dir=args.report)
    print_table(report)
    if report["skipped"]:
        shown = ", ".join(report["skipped"][:5]) + (" ..." if len(report["skipped"]) > 5 else "")
        print(f"{len(report['skipped'])} images could not be read and are not scored: {shown}", file=sys.stderr)
    if args.out:
        print(f"per-image captions and scores written to {args.out}")
    if args.report:
        print(f"HTML gallery written to {Path(args.report) / 'index.html'}")


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['split']} split: {report['images']} images, beam {report['beam_size']}")
    for name in report["metrics"]:
        table.add_column(name, justify="right")
    table.add_row(*(f"{100 * v:.1f}" for v in report["metrics"].values()))
    Console().print(table)
    print("scores x100 (coco-caption / pycocoevalcap)")


def cmd_compare(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from captioner.metrics.bootstrap import compare_reports, significant

    rows, images = compare_reports(args.a, args.b, args.resamples, args.seed, args.tokenizer)
    print(f"A: {args.a}\nB: {args.b}")
    table = Table(title=f"{images} images, {args.resamples} paired resamples")
    for name in ("metric", "A", "B", "B - A", "95% interval", "P(B <= A)", ""):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for r in rows:
        table.add_row(r["metric"], f"{100 * r['a']:.1f}", f"{100 * r['b']:.1f}", f"{100 * r['diff']:+.1f}",
                      f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]", f"{r['p_not_better']:.3f}",
                      "significant" if significant(r) else "within noise")
    Console(width=200).print(table)
    print("scores x100; the interval covers the luck of which images were scored, not training noise (two "
          "trainings with another train.seed show that)")


def cmd_caption(args) -> None:
    from captioner.library import find_images
    from captioner.viz.outputs import OutputFolder

    if not args.images and not args.from_list:
        raise CaptionerError("caption: give image files or folders, or --from-list FILE")
    if args.output:
        return caption_to_file(args)
    out = Path(args.out) if args.out else None
    if out and out.exists() and not out.is_dir():
        raise CaptionerError(f"{out}: --out must be a folder, and this is a file")
    images = list(find_images(args.images, args.glob, args.from_list))
    cap = captioner_from_args(args, len(images))
    if out and not cap.has_attention:
        print(f"note: this model ({cap.kind}) has no attention map; writing captioned images only", file=sys.stderr)
    folder = OutputFolder(out, cap.kind, cap.has_attention) if out else None
    captioned = failed = 0
    for path, image, result in cap.caption_iter(images, batch_size=args.batch_size, beam_size=args.beam_size,
                                                max_len=args.max_len):
        if result.error is not None:
            failed += 1
            print(f"skipped {result.error}", file=sys.stderr)
            if folder:
                folder.skip(result.error)
            continue
        captioned += 1
        print(f"{path}: {result.text}" if len(images) > 1 else result.text, flush=True)
        if folder:
            folder.add(path, image, result.to_dict())
    if folder:
        folder.close()
        print(f"captioned images{' and attention figures' if cap.has_attention else ''} written to {out}/",
              file=sys.stderr)
    _finish(captioned, failed, len(images))


def caption_to_file(args) -> None:
    """caption --output: records written as they are captioned, resumable, with a progress bar."""
    from captioner.checkpoint import default_model_path
    from captioner.library import RecordFile, caption_library, check_output_name, find_images, model_digest

    check_output_name(args.output)
    out = RecordFile(args.output, resume=args.resume)
    images = [p for p in find_images(args.images, args.glob, args.from_list) if p not in out.done]
    if not images:
        out.close()
        print(f"nothing to caption: {args.output} holds every image already", file=sys.stderr)
        return
    cap = captioner_from_args(args, len(images))
    digest = model_digest(args.model or [default_model_path()])
    with _progress_bar(len(images), not args.no_progress) as advance:
        try:
            captioned, failed = caption_library(cap, images, out, digest, batch_size=args.batch_size,
                                                attention=args.attention, progress=advance,
                                                beam_size=args.beam_size, max_len=args.max_len)
        finally:
            out.close()
    print(f"{captioned} images captioned, {failed} failed; records in {args.output}", file=sys.stderr)
    _finish(captioned, failed, len(images))


def _finish(captioned: int, failed: int, total: int) -> None:
    """Exit code 0 when every image was captioned, 3 when some failed, 2 when none could be."""
    if failed:
        print(f"{failed} of {total} images skipped", file=sys.stderr)
        raise SystemExit(2 if not captioned else 3)


def _progress_bar(total: int, enabled: bool):
    """A context giving a function to call once per image: a rich progress bar (images/s, time left)."""
    from contextlib import contextmanager, nullcontext

    if not enabled:
        return nullcontext(lambda _record: None)

    @contextmanager
    def bar():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Speed(ProgressColumn):
            def render(self, task) -> Text:
                return Text(f"{task.speed or 0:.1f} images/s")

        columns = (TextColumn("captioning"), BarColumn(), MofNCompleteColumn(), Speed(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task("captioning", total=total)
            yield lambda _record: progress.advance(task)

    return bar()


def cmd_serve(args) -> None:
    import uvicorn

    from captioner.checkpoint import default_model_path
    from captioner.devices import pick_device
    from captioner.serve.app import create_app

    models = serve_models(args.model or [str(default_model_path())])
    if args.consensus:  # a model with its own encoder first encodes the training images (minutes, once)
        print(f"preparing consensus reranking with the training captions of {args.consensus} ...", flush=True)
    app = create_app(models, max_upload_mb=args.max_upload_mb, device=str(pick_device(args.device)),
                     consensus=args.consensus, backend=args.backend)
    print(f"captioner demo on http://{args.host}:{args.port}/  (models: {', '.join(models)}; Ctrl-C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def serve_models(specs: list[str]) -> dict:
    """``serve --model`` values ([NAME=]PATH, PATH may be A.pt+B.pt) -> {name: path or list of paths}."""
    from captioner.checkpoint import default_model_path

    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:  # a bare path: named after its run folder (runs/soft_lite0/model.pt -> soft_lite0)
            path = spec
            name = Path(spec).parent.name if Path(spec).stem == "model" else Path(spec).stem
            name = "shipped" if Path(spec) == default_model_path() else name
        if name in models:
            raise CaptionerError(f"serve: two models named '{name}'; name them with --model NAME=PATH")
        # NAME=A.pt+B.pt: the files caption as one ensemble (a file whose own name holds "+" stays one file)
        models[name] = path if Path(path).is_file() or "+" not in path else path.split("+")
    return models


def cmd_export(args) -> None:
    from captioner.checkpoint import load_models, save_model
    from captioner.model import check_one_encoder, with_settings

    if args.onnx:
        return export_onnx_files(args)
    *sources, out = args.files
    if not sources:
        raise file_error(out, "export needs a model file to read and a file to write")
    model = load_models(sources)  # several: one file holding the whole ensemble
    if args.member:  # one decoder out of an ensemble
        model = model.member(args.member)
    check_one_encoder(model, out)
    if args.consensus:  # the training split's captions and image features travel in the file; it reranks with
        from captioner.model_features import consensus_index  # them unless --set decode.consensus=false

        print(f"reading the consensus index of {args.consensus} ...", flush=True)
        model.consensus_index = consensus_index(model, args.consensus, args.cache, progress=True)
        model = with_settings(model, ["decode.consensus=true"])
    if args.set:  # decoding defaults stored with the model (e.g. a length penalty)
        model = with_settings(model, args.set)
    if model.config.decode.consensus and model.consensus_index is None:
        raise file_error(out, "decode.consensus needs a dataset's training captions: store them with "
                         "--consensus DATA, or choose it per run (evaluate --set decode.consensus=true, caption "
                         "--consensus DATA)")
    if args.embed_encoder and model.encoder_state is None:  # e.g. trained on a local weights file's features
        from captioner.model import model_encoder

        model.encoder_state = {k: v.detach().cpu() for k, v in model_encoder(model).state_dict().items()}
    if args.int8_encoder and model.encoder_state is None:
        raise file_error(sources[0], "--int8-encoder: the model carries no encoder weights "
                         "(fine-tuned, or add --embed-encoder)")
    path = save_model(out, model, half=args.half, int8_encoder=args.int8_encoder, int8_decoder=args.int8_decoder)
    kinds = [k for k, on in (("float16", args.half), ("int8 encoder", args.int8_encoder),
                             ("int8 decoder", args.int8_decoder), ("consensus index", model.consensus_index),
                             (f"{len(sources)} decoders", len(model.member_configs) > 1)) if on]
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB{''.join(', ' + k for k in kinds)})")


def export_onnx_files(args) -> None:
    from captioner.checkpoint import load_models
    from captioner.encoders.onnx import export_onnx, onnx_available
    from captioner.model import model_encoder

    if not onnx_available():
        raise CaptionerError("export --onnx: onnxruntime and onnxscript are not installed (pip install "
                             "'captioner[onnx]')")
    model = load_models(args.files)
    if args.member:
        model = model.member(args.member)
    if model.sources:
        raise file_error(args.onnx, "an ensemble across encoders has several encoders: export each file apart")
    path = export_onnx(model_encoder(model), Path(args.onnx) / "encoder.onnx")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.parent / 'manifest.json'}")


def add_decode_set(s) -> None:
    s.add_argument("--set", action="append", default=[], metavar="decode.KEY=VALUE",
                   help="decoding setting for this run, e.g. --set decode.block_ngram=3, "
                        "--set decode.length_penalty=1.0 or --set model.hard_inference=argmax (repeatable)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_search_size(s) -> None:
    """--beam-size and --max-len: None unless given, which means the model's decode.beam_size / decode.max_len
    (as its file stores them, or as --set changes them for the run)."""
    s.add_argument("--beam-size", type=positive_int, metavar="N",
                   help="beam size; 1 is greedy decoding (default: the model's decode.beam_size, stored in its "
                        "file from its training config, usually 5; --set decode.beam_size=N changes it)")
    s.add_argument("--max-len", type=positive_int, metavar="N",
                   help="longest caption in words (default: the model's decode.max_len, stored in its file from "
                        "its training config, usually 30; --set decode.max_len=N changes it)")


def add_member(s, what: str) -> None:
    s.add_argument("--member", type=int, metavar="N",
                   help=f"{what} only the Nth decoder of an ensemble (counting from 1), alone")


def add_device(s, what: str) -> None:
    s.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help=f"{what} (default auto: the GPU when torch sees one, else the CPU)")


def add_backend(s) -> None:
    s.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                   help="what runs the encoder: torch, or onnx (ONNX Runtime on the CPU, several times faster; "
                        "the encoder is exported once into the cache); auto (default): onnx on a CPU where "
                        "onnxruntime is installed and more than a few images are to be captioned, else torch")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="captioner", description="Train, evaluate and use neural image captioners.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="show info messages and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write the synthetic shapes dataset (known captions and object boxes)")
    s.add_argument("--out", required=True, help="folder to write (images/, captions.txt, splits/, objects.json)")
    s.add_argument("--n-train", type=int, default=1200, help="number of training images (default 1200)")
    s.add_argument("--n-val", type=int, default=100, help="number of validation images (default 100)")
    s.add_argument("--n-test", type=int, default=100, help="number of test images (default 100)")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--seed", type=int, default=0, help="random seed: same seed, same files (default 0)")
    s.set_defaults(func=cmd_synth)

    data_help = ("dataset: a folder with images/, captions.txt, splits/NAME.txt; a Flickr8k folder "
                 "(Flickr8k.token.txt + split lists); a Kaggle folder (captions.txt CSV + Images/); "
                 "or a Karpathy dataset_*.json")
    s = sub.add_parser("prepare", help="check a dataset, print its statistics, write a normalised copy + vocab")
    s.add_argument("--data", required=True, help=data_help)
    s.add_argument("--images", help="image folder, when it is not beside the annotations")
    s.add_argument("--min-word-freq", type=int, default=5, help="words rarer than this in train become <unk>")
    s.add_argument("--out", help="folder for dataset.json (Karpathy format) and vocab.json")
    s.set_defaults(func=cmd_prepare)

    def add_config(s):
        s.add_argument("--config", required=True,
                       help="YAML config file, or the name of a shipped one (e.g. soft_lite0, synth_soft)")
        s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set train.max_epochs=3 (repeatable)")
        s.add_argument("--cache", help="feature cache root (default $CAPTIONER_CACHE, else .cache/captioner in the home folder)")
        s.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and CI)")

    s = sub.add_parser("features", help="extract encoder features of a dataset into the cache (resumable)")
    s.add_argument("--data", required=True, help=data_help)
    add_config(s)
    add_device(s, "where the encoder runs")
    s.set_defaults(func=cmd_features)

    s = sub.add_parser("train", help="train a model (features from the cache; decoded-metric model selection)")
    s.add_argument("--data", required=True, help=data_help)
    s.add_argument("--out", help="run folder (default runs/CONFIG_NAME)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="caption a split and score it (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D)")
    s.add_argument("--model", action="append", help="model file (model.pt) or a run's Lightning checkpoint "
                   "(default: the model shipped with captioner); repeat it to decode with an ensemble")
    s.add_argument("--data", required=True, help=data_help)
    s.add_argument("--split", default="val", help="split to score (default val)")
    add_search_size(s)
    s.add_argument("--limit", type=int, help="score only the first N images of the split")
    s.add_argument("--out", help="JSON file for the metric table and per-image captions and scores")
    s.add_argument("--report", metavar="DIR", help="write an HTML gallery of the split to DIR/index.html: "
                   "every image with its caption, references and scores, sortable best and worst")
    add_decode_set(s)
    s.add_argument("--tokenizer", default="auto", choices=["auto", "ptb", "python"],
                   help="ptb: coco-caption's Java PTB tokenizer; python: our copy of it; auto: ptb if Java exists")
    s.add_argument("--no-meteor", action="store_true", help="skip METEOR (the slowest metric; needs Java)")
    s.add_argument("--cache", help="feature cache root (default $CAPTIONER_CACHE, else .cache/captioner in the home folder)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_member(s, "score")
    add_device(s, "where decoding (and a fine-tuned encoder) runs")
    add_backend(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("compare", help="is model B better than model A? paired bootstrap of two evaluate --out "
                       "reports (BLEU-4, ROUGE-L, CIDEr-D)")
    s.add_argument("a", help="report of model A (captioner evaluate ... --out a.json)")
    s.add_argument("b", help="report of model B on the same images")
    s.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the resampling (default 0)")
    s.add_argument("--tokenizer", default="auto", choices=["auto", "ptb", "python"],
                   help="for BLEU-4's n-gram counts; use the one the reports were scored with (auto: ptb if Java)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("caption", help="caption images: files, folders, a list; print them or write JSONL/CSV")
    s.add_argument("--model", action="append", help="model file (model.pt) or a run's Lightning checkpoint "
                   "(default: the model shipped with captioner); repeat it to decode with an ensemble")
    s.add_argument("images", nargs="*", help="image files (JPEG, PNG, WebP, GIF, ...) and folders (their images, "
                   "recursively)")
    s.add_argument("--glob", default="*", help="in folders, only files whose names match this pattern (e.g. '*.jpg')")
    s.add_argument("--from-list", metavar="FILE", help="a text file with one image path per line")
    s.add_argument("--output", metavar="FILE.jsonl|FILE.csv", help="write one record per image (path, caption, "
                   "score, model, error) as it is captioned; exit code 3 when some images failed")
    s.add_argument("--resume", action="store_true", help="with --output: skip the images it already holds")
    s.add_argument("--attention", action="store_true", help="with --output: add each caption's words and "
                   "attention maps (one g*g list per word) to its record")
    s.add_argument("--batch-size", type=positive_int, default=32, help="images encoded and decoded together "
                   "(default 32)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_search_size(s)
    add_decode_set(s)
    s.add_argument("--out", help="folder for each image with its caption drawn (NAME.jpg), its per-word "
                   "attention figure (NAME.attention.png) and captions.json")
    s.add_argument("--consensus", metavar="DATA", help="rerank the beams by agreement with the captions of the "
                   "most similar training images of this dataset (decode.consensus; its training split's features "
                   "are read from the cache or computed once per run)")
    add_member(s, "caption with")
    add_device(s, "where the encoder and decoder run")
    add_backend(s)
    s.set_defaults(func=cmd_caption)

    s = sub.add_parser("serve", help="start the local web demo and JSON API (POST /api/caption)")
    s.add_argument("--model", action="append", metavar="[NAME=]PATH",
                   help="model file to offer (repeatable; default: the model shipped with captioner); "
                        "NAME=A.pt+B.pt offers the files as one ensemble, across encoders too")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload (default 10 MB)")
    s.add_argument("--consensus", metavar="DATA", help="rerank every model's beams by agreement with the captions "
                   "of the most similar training images of this dataset (as caption --consensus)")
    add_device(s, "where the models run")
    add_backend(s)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("export", help="write a model file (from a model.pt or a run's checkpoint), e.g. in fp16")
    s.add_argument("files", nargs="+", metavar="MODEL [MODEL ...] OUT",
                   help="model file(s) (model.pt or a run's Lightning checkpoint; several: an ensemble, written as "
                        "one file) and the model file to write (none with --onnx)")
    s.add_argument("--onnx", metavar="DIR", help="instead: write the model's encoder as DIR/encoder.onnx for ONNX "
                   "Runtime, with DIR/manifest.json (its SHA-256, the preprocessing)")
    s.add_argument("--half", action="store_true", help="store weights in float16 (half the size)")
    s.add_argument("--embed-encoder", action="store_true",
                   help="store the encoder's weights in the file (a model trained on a local weights file's "
                        "features then needs no such file to run)")
    s.add_argument("--int8-encoder", action="store_true",
                   help="store the encoder's weight tensors in int8, one scale per output channel, but for its "
                        "depthwise and stem convolutions (models that carry their encoder: fine-tuned, or with "
                        "--embed-encoder)")
    s.add_argument("--int8-decoder", action="store_true",
                   help="store the decoder's weight matrices in int8, one scale per output row (a quarter of "
                        "float32; measure the model after: docs/results.md)")
    s.add_argument("--consensus", metavar="DATA", help="carry this dataset's training captions and their images' "
                   "global features in the file (int8), and rerank with them by default (decode.consensus; "
                   "--set decode.consensus=false carries them switched off)")
    s.add_argument("--cache", help="feature cache root, for --consensus (default $CAPTIONER_CACHE, else "
                   ".cache/captioner in the home folder)")
    add_decode_set(s)
    add_member(s, "write")
    s.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if args.command == "train":  # the one command that uses Lightning
        import lightning.pytorch  # noqa: F401  (it sets its loggers to INFO when imported: quieten them after)

        for noisy in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(noisy).setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        args.func(args)
    except CaptionerError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
