#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, written by crds/gen_crds.py) into the Helm chart's
# crds/ directory, which Helm installs before the templates. The copies must stay
# byte-identical: tests/unit/test_chart.py fails when they drift. Run after gen_crds.py
# (`make crds` does both). Removes chart CRDs that no longer exist in crds/.
set -euo pipefail
cd "$(dirname "$0")/.."
src=crds
dst=charts/tpfilter/crds
mkdir -p "$dst"
shopt -s nullglob
sources=("$src"/*.yaml)
((${#sources[@]})) || { echo "sync-chart-crds: no $src/*.yaml" >&2; exit 1; }
for f in "$dst"/*.yaml; do
  [ -e "$src/$(basename "$f")" ] || { rm -f "$f"; echo "sync-chart-crds: removed $f"; }
done
for f in "${sources[@]}"; do
  if ! cmp -s "$f" "$dst/$(basename "$f")"; then
    cp "$f" "$dst/"
    echo "sync-chart-crds: $f -> $dst/"
  fi
done
