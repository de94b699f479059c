#!/usr/bin/env bash
# Determined sources this file (`source startup-hook.sh`, from the model folder) in every task container
# before the entrypoint: install what the trial needs on top of the image, with the image's own Python
# (python3), and change nothing the image's torch depends on.
#
# Because it is sourced, all the work runs in a subshell: the task's shell keeps its folder, its options
# and its traps. A failure returns non-zero, which stops the task (its entrypoint runs under `set -e`).
#
# requirements.txt holds ranges, so pip keeps every package the image already has in range and installs only
# what is missing. The constraints file pins the image's torch packages and its numpy: NGC's torch is built
# against the image's numpy (1.24 in determinedai/pytorch-ngc:0.38.x), and numpy 2 would break it. If a
# requirement cannot be met with those pins, pip stops with ResolutionImpossible: the trial fails before it
# starts, loudly, instead of running on a replaced torch.
(
  set -euo pipefail
  cd "$(dirname "${BASH_SOURCE[0]}")"
  constraints=$(mktemp)
  trap 'rm -f "$constraints"' EXIT
  # `pip list --format=freeze` prints name==version even for packages installed from a wheel URL or a build.
  python3 -m pip list --format=freeze | grep -iE '^(torch|torchvision|torchaudio|triton|numpy|nvidia-[a-z0-9-]+)==' \
    > "$constraints" || true
  echo "startup-hook.sh: keeping the image's $(grep -iE '^(torch|torchvision|numpy)==' "$constraints" | tr '\n' ' ')" >&2
  python3 -m pip install --quiet --no-cache-dir -r requirements.txt -c "$constraints"
) || { echo "startup-hook.sh: installing requirements.txt failed (see pip's message above)" >&2; false; }
