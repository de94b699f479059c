#!/usr/bin/env bash
# Determined runs this in every task container before the entrypoint: install what the trial needs on
# top of the image. requirements.txt has no torch pin; the constraints file pins the image's own torch
# packages, so pip keeps them (and fails loudly rather than replacing them if a requirement disagrees).
set -euo pipefail
cd "$(dirname "$0")"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# `pip list --format=freeze` prints name==version even for torch installed from a wheel URL.
python3 -m pip list --format=freeze | grep -iE '^(torch|torchvision|torchaudio|triton|nvidia-[a-z0-9-]+)==' \
  > "$constraints" || true
python3 -m pip install --quiet --no-cache-dir -r requirements.txt -c "$constraints"
