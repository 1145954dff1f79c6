# syntax=docker/dockerfile:1
# The model server. PyPI's torch wheels carry their own CUDA runtime: a GPU host needs only the
# NVIDIA driver and the NVIDIA container toolkit. Without a GPU the same image serves on the CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WEIGHTS_DIR=/app/weights \
    DATA_DIR=/data

WORKDIR /app

# Dependencies first, so code changes do not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p app models training bench \
    && touch app/__init__.py models/__init__.py training/__init__.py bench/__init__.py \
    && pip install . \
    && pip uninstall -y model-server

COPY models ./models
COPY app ./app
COPY weights ./weights

RUN useradd --create-home --uid 10001 server \
    && mkdir -p /data && chown server:server /data
USER server
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
