#!/usr/bin/env bash
# The main job on the built-in default: synthetic shapes -> features -> soft-attention model -> scores -> captions,
# then the model shipped with captioner (trained on Flickr8k) captions the sample photos that come with it.
set -euo pipefail
DEMO="${CAPTIONER_DEMO_DIR:-${HOME}/.cache/captioner/demo}"
DATA="$DEMO/synth"
RUN="$DEMO/run_soft"
rm -rf "$RUN"   # the demo's own run folder: start it afresh every time

echo "== 1/5 synthetic dataset ($DATA)"
captioner synth --out "$DATA"
echo "== 2/5 training a soft-attention model (tiny CNN features, cached)"
captioner train --config synth_soft --data "$DATA" --out "$RUN" --cache "$DEMO/cache" --no-progress
echo "== 3/5 scores on the test split, beam 3"
captioner evaluate --model "$RUN/model.pt" --data "$DATA" --split test --beam-size 3 \
  --cache "$DEMO/cache" --out "$RUN/test_report.json" --no-progress
echo "== 4/5 captions of a few test images"
mapfile -t IMAGES < <(head -n 4 "$DATA/splits/test.txt" | sed "s|^|$DATA/images/|")
captioner caption --model "$RUN/model.pt" "${IMAGES[@]}"
echo "reference captions:"
for img in "${IMAGES[@]}"; do grep -m1 "^$(basename "$img")" "$DATA/captions.txt"; done
echo "== 5/5 the shipped Flickr8k model captions the sample photos (public domain / CC0, see ATTRIBUTION.md)"
SAMPLES="$(python -c 'import captioner, pathlib; print(pathlib.Path(captioner.__file__).parent / "samples")')"
captioner caption "$SAMPLES"/*.jpg --out "$DEMO/shown"
echo "(each photo with its caption, and where the model looked for each word: $DEMO/shown/)"
