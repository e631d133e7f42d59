#!/usr/bin/env bash
# The worked example end to end, through the public interface only: a method plug-in and a
# dataset card that live outside genbench. CI runs it in a fresh virtual environment with
# genbench installed non-editable (tests/test_examples.py).
#
#   bash examples/run_example.sh [OUT]        # OUT defaults to runs-example; PROTOCOL=quick
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-runs-example}"
protocol="${PROTOCOL:-quick}"

# 1. Your method (examples/my_method.py) on your data (examples/digits-card.toml), trained
#    and scored under the protocol next to two of our reference rows.
genbench run --protocol "$protocol" --device cpu --out "$out" \
    --include "$here/my_method.py" --dataset "$here/digits-card.toml" \
    --methods pixel-mixture,independent-pixels,real-data

# 2. Reload the trained run and draw its samples again (the images its evaluation scored).
genbench sample --include "$here/my_method.py" \
    --run "$out/$protocol/my-digits/pixel-mixture/seed-0" --out "$out/pixel-mixture.npz"

# 3. Score samples made anywhere against the same reference; --as adds them to the
#    leaderboard as an external row.
genbench score --samples "$out/pixel-mixture.npz" --dataset "$here/digits-card.toml" \
    --protocol "$protocol" --as pixel-mixture-resampled --out "$out"

# 4. The leaderboard with all four rows.
genbench report --runs "$out" --protocol "$protocol" --dataset my-digits
