# gapscope, CPU image: the Gradio demo on port 7860. Also what a hosted (Hugging Face Docker
# Space-style) demo runs. The GPU image is docker/Dockerfile.gpu (docker-compose.gpu.yml).
#
#   docker build -t gapscope .
#   docker run --rm --init -p 7860:7860 -v gapscope-results:/app/results gapscope
#
# The first start builds the bundled example and runs the batch job on it once when the
# results volume holds no published run (a few minutes on 2 cores); later starts serve what is
# published. A command given to `docker run` runs instead of the demo, e.g. a batch run:
#   docker run --rm --init -v gapscope-results:/app/results -v /srv/images:/data:ro gapscope \
#     python -m batch run --real /data/real --synthetic /data/synthetic --results /app/results
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Spaces run containers as uid 1000: the same non-root user here, with a home for caches.
RUN useradd --create-home --uid 1000 user

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them. torch and torchvision
# come from the CPU wheel index at requirements.txt's pins, read from it here (PyPI's are CUDA
# builds of several GB); the rest of requirements.txt then keeps them, since a CPU wheel's
# version (X+cpu) satisfies the pin ==X.
COPY requirements.txt requirements-dev.txt ./
# hadolint ignore=SC2046
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        $(grep -E '^(torch|torchvision)==' requirements.txt) \
    && pip install -r requirements.txt

COPY lib/ lib/
COPY batch/ batch/
COPY demo/ demo/
COPY Makefile ./
COPY docker/entrypoint.sh docker/entrypoint.sh

# The code stays root's; the user writes only the run store, the data and numba's cache.
RUN chmod 755 docker/entrypoint.sh \
    && mkdir -p results data .cache/numba \
    && chown -R 1000:1000 results data .cache

ENV HOME=/home/user \
    NUMBA_CACHE_DIR=/app/.cache/numba \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False

USER 1000:1000

VOLUME ["/app/results", "/app/data"]
EXPOSE 7860

# The demo and the batch runner stop cleanly on Ctrl-C (KeyboardInterrupt).
STOPSIGNAL SIGINT

# start-period covers the first start's example build and batch run; python exits 1 when
# the demo does not answer.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GRADIO_SERVER_PORT', '7860') + '/healthz', timeout=8)"]

ENTRYPOINT ["/app/docker/entrypoint.sh"]
