"""A markdown table of `captioner evaluate --out` reports, each row against one reference report: its metrics
and its BLEU-4 and CIDEr-D differences with their paired bootstrap intervals (as `captioner compare` gives).

    python tools/report_table.py REFERENCE.json "label=RUN_A/val.json" "label=RUN_B/val.json" ... \\
        [--resamples 1000] [--tokenizer auto|ptb|python]

A report given without ``label=`` is labelled by its path. The reference gets the first row (no interval); given
alone, it is the whole table.
Every report must score the same images (the same split, the same --limit).
"""

import argparse
import sys
from pathlib import Path

from captioner.errors import CaptionerError
from captioner.metrics.bootstrap import compare, load_report, significant

COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


def labelled(arg: str) -> tuple[str, Path]:
    """``label=path`` or ``path`` -> (label, path)."""
    label, sep, path = arg.partition("=")
    return (label, Path(path)) if sep else (arg, Path(arg))


def interval(row: dict) -> str:
    mark = "" if significant(row) else " (noise)"
    return f"{100 * row['diff']:+.1f} [{100 * row['low']:+.1f}, {100 * row['high']:+.1f}]{mark}"


def table(reference: tuple[str, Path], others: list[tuple[str, Path]], resamples: int, tokenizer: str) -> str:
    base = load_report(reference[1])
    lines = ["| model | " + " | ".join(COLUMNS) + " | BLEU-4 vs first row | CIDEr-D vs first row |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]

    def cells(report: dict) -> str:
        return " | ".join(f"{100 * report['metrics'][c]:.1f}" if c in report["metrics"] else "–" for c in COLUMNS)

    lines.append(f"| {reference[0]} | {cells(base)} | | |")
    for label, path in others:
        report = load_report(path)
        rows, _ = compare(base, report, resamples, 0, tokenizer, ("BLEU-4", "CIDEr-D"),
                          names=(reference[1], path))
        diffs = {r["metric"]: interval(r) for r in rows}
        lines.append(f"| {label} | {cells(report)} | {diffs.get('BLEU-4', '–')} | {diffs.get('CIDEr-D', '–')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="tools/report_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("reference", help="the report every other row is compared with ([label=]path)")
    p.add_argument("reports", nargs="*", help="[label=]path of a captioner evaluate --out report (none: the "
                   "reference's row alone)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--tokenizer", choices=("auto", "ptb", "python"), default="auto",
                   help="for BLEU-4's n-gram counts, as the reports were scored (auto: ptb if Java)")
    args = p.parse_args(argv)
    try:
        print(table(labelled(args.reference), [labelled(a) for a in args.reports], args.resamples, args.tokenizer))
    except CaptionerError as e:
        sys.exit(f"tools/report_table.py: {e}")


if __name__ == "__main__":
    main()
