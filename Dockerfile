# syntax=docker/dockerfile:1
# The model server. PyPI's torch wheels for Linux x86_64 carry their own CUDA runtime (the nvidia-* wheels), so a
# GPU host needs only the NVIDIA driver and the NVIDIA container toolkit; no CUDA base image. Without a GPU the same
# image serves on the CPU (DEVICE=auto). See docs/deploy.md.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WEIGHTS_DIR=/app/weights \
    DATA_DIR=/data

WORKDIR /app

# Dependencies first, read from pyproject.toml (the single list of versions), so that a code change does not
# reinstall torch: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code runs from /app (not installed): app/core/config.py resolves weights/ and data/style/ from here.
COPY models ./models
COPY preprocessing ./preprocessing
COPY app ./app
# Weights are baked in (37 MB, checksummed by weights/manifest.json); the style presets are the paintings in data/style/.
COPY weights ./weights
COPY data/style ./data/style

# A fixed numeric user, so that volume ownership and Kubernetes' runAsNonRoot can check it.
RUN useradd --create-home --uid 10001 --user-group server \
    && mkdir -p /data \
    && chown 10001:10001 /data
USER 10001:10001
# Runtime data (style jobs and their results). One server process per DATA_DIR: scale style work with JOB_WORKERS.
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# `python -m app` (app/server/launch.py) runs uvicorn as `make serve` does, configured from the settings: request
# heads capped (MAX_HEADER_BYTES, HEADER_TIMEOUT_S), idle and stalled connections closed (KEEP_ALIVE_TIMEOUT_S,
# BODY_TIMEOUT_S), proxy headers on, no uvicorn access log. It is PID 1's child under `init: true` (compose) and
# handles SIGTERM: it stops accepting connections, lets in-flight requests finish for up to SHUTDOWN_GRACE_S (10 s),
# closes the connections still open, then runs the app's shutdown (stops style workers, up to 14 s). Keep the stop
# grace period (compose: 30s) above the two together.
# Behind a reverse proxy, set FORWARDED_ALLOW_IPS to the proxy's address (uvicorn reads it).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
