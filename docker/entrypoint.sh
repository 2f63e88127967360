#!/bin/sh
# Entrypoint of both images (Dockerfile, docker/Dockerfile.gpu): what `make demo` does.
#
# No arguments, or only options (passed on to the demo, e.g. `--port 8080`): when the results
# store has no published run, build the bundled example (unless it is there) and run the batch
# job on it once, while a page on the demo's port shows its progress; then serve the demo.
# A first start takes a few minutes (the page answers within seconds), later ones seconds.
# A command instead (e.g. `python -m batch run ...`, as the compose batch service does): run it.
#
# GAPSCOPE_RESULTS (default results) and GAPSCOPE_EXAMPLE (default data/example) are relative
# to the application folder, /app in the images.
set -eu

cd "$(dirname "$0")/.."

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

RESULTS="${GAPSCOPE_RESULTS:-results}"
EXAMPLE="${GAPSCOPE_EXAMPLE:-data/example}"

if ! python -m batch runs --results "$RESULTS" | grep -q '^\*'; then
    echo "no run published in $RESULTS: running the batch job once on the bundled example" >&2
    mkdir -p "$RESULTS"
    # a page at once ("building the example run", with the job's progress from
    # building.log); it exits by itself when the run is published
    python -m demo --results "$RESULTS" --building "$@" &
    page=$!
    if ! {
        if [ ! -f "$EXAMPLE/metadata.csv" ]; then
            python -m batch example --out "$EXAMPLE"
        fi
        python -m batch run --real "$EXAMPLE/real" --synthetic "$EXAMPLE/synthetic" \
            --results "$RESULTS"
    } > "$RESULTS/building.log" 2>&1; then
        kill "$page" 2>/dev/null || true
        cat "$RESULTS/building.log" >&2
        exit 1  # a failed batch run stops the container rather than serving nothing
    fi
    wait "$page" || true
fi

exec python -m demo --results "$RESULTS" "$@"
