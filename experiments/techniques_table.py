"""The techniques ablation on Flickr8k: each technique against the cross-entropy baseline of the same model.

    python experiments/techniques_table.py --plan        # list the rows and the commands, run nothing
    python experiments/techniques_table.py               # train / score every row not done yet (many CPU hours)
    python experiments/techniques_table.py --rows scst,block3

The baseline is the soft EfficientNet-Lite0 row of the main table (recipes/flickr8k_table.py trains it); each
technique row changes one thing. The training techniques also have NIC rows (nic_*), measured against the
main table's NIC row: a NIC run costs about a third of a soft-attention run on this CPU. Training rows get the
same 10-epoch budget as the main table (SCST: 2 epochs after the baseline); decoding rows re-score the baseline with other search settings. Every row is scored on
val at beam 5 with all metrics; the table goes to RUNS/techniques.md with each row's change in CIDEr-D.
Runs live beside the main table's in ~/.cache/captioner/runs/flickr8k (resumable).
"""

import argparse
import json
import sys
from pathlib import Path

from captioner.metrics.bootstrap import compare

# the main table's recipe trains and scores the runs: this table's rows are run (and resumed) the same way
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from flickr8k_table import DATA, METRICS, RUNS, evaluate, train  # noqa: E402

BASE = "soft_lite0"
NIC = "nic_lite0"
# name -> (label, kind, settings[, base config]): kind "base" = the base's own score (from the main table's
# run), "train" = a new run of the base config with these settings,
# "scst" = SCST from the baseline's model, "decode" = the baseline (or the run DECODE_FROM names) re-scored
# with these decoding settings,
# "decode_scst" = the SCST row's model scored with these decoding settings,
# "ensemble" = these runs' models decoded together ("ensemble_decode": with the best recipe's decoding).
# The base is soft_lite0 unless a fourth item names another: the training techniques are also measured on NIC,
# whose 10-epoch run costs a third of soft attention's.
ROWS = {
    "baseline": ("cross-entropy baseline (soft attention, EfficientNet-Lite0)", "base", ()),
    "smooth": ("label smoothing 0.1", "train", ("train.label_smoothing=0.1",)),
    "ss": ("scheduled sampling, up to 0.25 (from epoch 3, over 4 epochs)", "train",
           ("train.ss_max=0.25", "train.ss_start=2", "train.ss_ramp=4")),
    "dropout3": ("dropout 0.3 (baseline 0.5)", "train", ("model.dropout=0.3",)),
    "embed256": ("word embedding 256 (baseline 512)", "train", ("model.embed_dim=256",)),
    "scst": ("SCST, CIDEr-D reward, mean-of-samples baseline, lr 1e-5, 2 epochs after the baseline", "scst",
             ("train.max_epochs=2",)),
    "scst_dropout3": ("SCST as above, from the dropout 0.3 row's model", "scst",
                      ("train.max_epochs=2", "model.dropout=0.3")),
    "scst_g14": ("SCST as above, 1 epoch, from the 14×14 recipe check's last epoch (its CIDEr-D-best)", "scst",
                 ("train.max_epochs=1", "encoder.input_size=448", "encoder.grid_size=14")),
    "scst_smooth": ("SCST as above, 1 epoch, from the label-smoothing row's model", "scst", ("train.max_epochs=1",)),
    "block3": ("decoding: trigram blocking", "decode", ("decode.block_ngram=3",)),
    "lp1": ("decoding: length penalty 1.0", "decode", ("decode.length_penalty=1.0",)),
    "best": ("best recipe: SCST + length penalty 1.0 + trigram blocking (the shipped model)", "decode_scst",
             ("decode.length_penalty=1.0", "decode.block_ngram=3")),
    "best_dropout3": ("SCST from dropout 0.3 + length penalty 1.0 + trigram blocking", "decode_scst",
                      ("decode.length_penalty=1.0", "decode.block_ngram=3")),
    "best_g14": ("SCST from the 14×14 grid's last epoch + length penalty 1.0 + trigram blocking", "decode_scst",
                 ("decode.length_penalty=1.0", "decode.block_ngram=3")),
    "best_smooth": ("SCST from label smoothing + length penalty 1.0 + trigram blocking", "decode_scst",
                    ("decode.length_penalty=1.0", "decode.block_ngram=3")),
    "smooth_decode": ("label smoothing 0.1 + length penalty 1.0 + trigram blocking (no SCST)", "decode",
                      ("decode.length_penalty=1.0", "decode.block_ngram=3")),
    "ensemble2": ("ensemble: soft + NIC (EfficientNet-Lite0)", "ensemble", ("soft_lite0", "nic_lite0")),
    # (the hard member: the run with the whole-caption REINFORCE reward, the hard row when these were measured)
    "ensemble": ("ensemble: soft + hard + NIC (EfficientNet-Lite0)", "ensemble",
                 ("soft_lite0", "hard_lite0_caption", "nic_lite0")),
    "best_ensemble": ("best recipe, ensemble (over 25 MB, not shippable): SCST soft + uniform, length penalty 1.0 "
                      "+ trigram blocking", "ensemble_decode", ("tech_scst", "uniform_lite0")),
    "ensemble_sh": ("ensemble: soft + hard (EfficientNet-Lite0)", "ensemble", ("soft_lite0", "hard_lite0_caption")),
    "ensemble_su": ("ensemble: soft + uniform (EfficientNet-Lite0)", "ensemble", ("soft_lite0", "uniform_lite0")),
    "ensemble_suh": ("ensemble: soft + uniform + hard (EfficientNet-Lite0)", "ensemble",
                     ("soft_lite0", "uniform_lite0", "hard_lite0_caption")),
    "ensemble_ssu": ("ensemble: soft + soft at batch 32 + uniform (EfficientNet-Lite0)", "ensemble",
                     ("soft_lite0", "soft_lite0_b32", "uniform_lite0")),
    "best_ensemble3": ("best recipe, ensemble of three: SCST soft + soft at batch 32 + uniform, length penalty 1.0 "
                       "+ trigram blocking", "ensemble_decode", ("tech_scst", "soft_lite0_b32", "uniform_lite0")),
    "best_ensemble4": ("best recipe, ensemble of four: SCST soft + label smoothing + scheduled sampling + uniform, "
                       "length penalty 1.0 + trigram blocking", "ensemble_decode",
                       ("tech_scst", "tech_smooth", "tech_ss", "uniform_lite0")),
    "nic_baseline": ("NIC cross-entropy baseline (EfficientNet-Lite0)", "base", (), NIC),
    "nic_smooth": ("NIC + label smoothing 0.1", "train", ("train.label_smoothing=0.1",), NIC),
    "nic_ss": ("NIC + scheduled sampling, up to 0.25 (from epoch 3, over 4 epochs)", "train",
               ("train.ss_max=0.25", "train.ss_start=2", "train.ss_ramp=4"), NIC),
    "nic_dropout3": ("NIC + dropout 0.3 (baseline 0.5)", "train", ("model.dropout=0.3",), NIC),
    "nic_embed256": ("NIC + word embedding 256 (baseline 512)", "train", ("model.embed_dim=256",), NIC),
}
# Where the SCST rows start (a model file under the runs folder; default: the baseline's model.pt), and which
# SCST row a "decode_scst" row scores (default: "scst").
SCST_FROM = {"scst_dropout3": "tech_dropout3/model.pt", "scst_g14": "soft_lite0_g14/checkpoints/last.ckpt",
             "scst_smooth": "tech_smooth/model.pt"}
SCST_ROW = {"best_dropout3": "scst_dropout3", "best_g14": "scst_g14", "best_smooth": "scst_smooth"}
# Which run a "decode" row re-scores (default: the baseline's), and the row that trains it.
DECODE_FROM = {"smooth_decode": "smooth"}


def decode_run(name: str, runs: Path) -> Path:
    return runs / (f"tech_{DECODE_FROM[name]}" if name in DECODE_FROM else BASE)


def scst_start(name: str, runs: Path) -> Path:
    """The model file an SCST row starts from."""
    return runs / SCST_FROM.get(name, f"{BASE}/model.pt")


def base_of(name: str) -> str:
    return ROWS[name][3] if len(ROWS[name]) > 3 else BASE


def plan(name: str, runs: Path) -> str:
    label, kind, settings = ROWS[name][:3]
    if kind == "train":
        return f"train {base_of(name)} --set {' --set '.join(settings)} -> {runs / ('tech_' + name)}"
    if kind == "scst":
        start = scst_start(name, runs)
        return (f"train scst_soft_lite0 --set train.init_from={start}" + "".join(f" --set {s}" for s in settings)
                + f" -> {runs / ('tech_' + name)}")
    if kind == "base":
        return f"evaluate --model {runs / base_of(name) / 'model.pt'} (the main table's report, reused)"
    if kind == "decode_scst":
        scst_run = runs / f"tech_{SCST_ROW.get(name, 'scst')}"
        return f"evaluate --model {scst_run / 'model.pt'}" + "".join(f" --set {s}" for s in settings)
    if kind in ("ensemble", "ensemble_decode"):
        sets = ROWS["best"][2] if kind == "ensemble_decode" else ()
        return "evaluate " + " ".join(f"--model {runs / r / 'model.pt'}" for r in settings) \
            + "".join(f" --set {s}" for s in sets)
    return f"evaluate --model {decode_run(name, runs) / 'model.pt'}" + "".join(f" --set {s}" for s in settings)


def score(name: str, data: Path, runs: Path, max_epochs: int) -> dict:
    label, kind, settings = ROWS[name][:3]
    if kind == "base":
        return evaluate(data, runs / base_of(name))
    if kind == "train":
        out = runs / f"tech_{name}"
        train(base_of(name), data, out, max_epochs, settings)
        return evaluate(data, out)
    if kind == "scst":
        start = scst_start(name, runs)
        if not start.exists():  # the baseline is checked in main(); the run a row starts from may be missing
            sys.exit(f"{start}: train that run first ({SCST_FROM[name].split('/')[0]})")
        out = runs / f"tech_{name}"
        train("scst_soft_lite0", data, out, None, (f"train.init_from={start}", *settings))
        return evaluate(data, out)
    if kind == "decode_scst":
        scst_row = SCST_ROW.get(name, "scst")
        score(scst_row, data, runs, max_epochs)  # trains the SCST row first if needed
        return evaluate(data, runs / f"tech_{scst_row}", sets=settings, report=runs / f"tech_{name}_val_beam5.json")
    if kind in ("ensemble", "ensemble_decode"):
        models = tuple(runs / r / "model.pt" for r in settings)
        sets = ROWS["best"][2] if kind == "ensemble_decode" else ()
        return evaluate(data, runs / BASE, models=models, sets=sets, report=runs / f"tech_{name}_val_beam5.json")
    if name in DECODE_FROM:
        score(DECODE_FROM[name], data, runs, max_epochs)  # trains (or resumes) that row first if needed
    return evaluate(data, decode_run(name, runs), sets=settings, report=runs / f"tech_{name}_val_beam5.json")


def delta_cider(report: dict, base_path: Path) -> str:
    """Change in CIDEr-D against the baseline's report, with its 95 % paired-bootstrap interval over the images."""
    if not base_path.exists():
        return ""
    (row,), _ = compare(json.loads(base_path.read_text()), report, metrics=("CIDEr-D",), names=(base_path, "row"))
    return f"{100 * row['diff']:+.1f} [{100 * row['low']:+.1f}, {100 * row['high']:+.1f}]"


def table(results: dict[str, dict], runs: Path) -> str:
    """One line per row; Δ CIDEr-D against the cross-entropy baseline of the row's own base model, with the
    95 % interval of a paired bootstrap over the val images (`captioner compare`)."""
    lines = ["| technique | " + " | ".join(METRICS) + " | Δ CIDEr-D [95 %] |", "|---" * (len(METRICS) + 2) + "|"]
    for name, report in results.items():
        m = report["metrics"]
        base_report = runs / base_of(name) / "val_beam5.json"
        delta = delta_cider(report, base_report) if ROWS[name][1] != "base" else ""
        lines.append(f"| {ROWS[name][0]} | " + " | ".join(f"{100 * m[k]:.1f}" if k in m else "–" for k in METRICS)
                     + f" | {delta} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--runs", type=Path, default=RUNS)
    p.add_argument("--rows", help=f"comma-separated rows (default all: {', '.join(ROWS)})")
    p.add_argument("--max-epochs", type=int, default=10, help="epoch budget of the training rows (default 10)")
    p.add_argument("--plan", action="store_true", help="print what each row runs, and run nothing")
    args = p.parse_args()
    wanted = args.rows.split(",") if args.rows else list(ROWS)
    unknown = set(wanted) - set(ROWS)
    if unknown:
        sys.exit(f"unknown rows: {', '.join(sorted(unknown))}; rows are {', '.join(ROWS)}")
    if args.plan:
        for name in wanted:
            print(f"{name:12s} {ROWS[name][0]}\n             {plan(name, args.runs)}")
        return
    for base in sorted({base_of(name) for name in wanted}):
        if not (args.runs / base / "model.pt").exists():
            sys.exit(f"{args.runs / base / 'model.pt'}: train the baseline first "
                     f"(recipes/flickr8k_table.py --rows {base})")
    results = {name: score(name, args.data, args.runs, args.max_epochs) for name in wanted}
    text = table(results, args.runs)
    (args.runs / "techniques.md").write_text(text + "\n")
    print(text)
    print(json.dumps({n: r["metrics"] for n, r in results.items()}, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
