# syntax=docker/dockerfile:1
# The distillguard gateway image: `docker build -t distillguard:0.1.0 .` (or `docker compose
# build`). Not built on the machine it was written on (no Docker engine there);
# tests/deploy/test_container.py checks that everything it names exists.

# --- builder: the wheel, from the sources only ------------------------------------------------
FROM python:3.11-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DISTILLGUARD_HOME=/var/lib/distillguard \
    DISTILLGUARD_CONFIG=/etc/distillguard/distillguard.toml \
    DISTILLGUARD_HOST=0.0.0.0 \
    DISTILLGUARD_PORT=8000
# torch first, pinned as the Makefile pins it, from PyTorch's CPU index: the usual way in a
# container (PyPI's default torch wheel pulls several GB of CUDA libraries the gateway never
# uses). The wheel's own pins then find torch==2.13.0 already installed.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --from=builder /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
# A non-root user owning only its state directory.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/distillguard --create-home \
    distillguard
COPY deploy/distillguard.toml /etc/distillguard/distillguard.toml
USER distillguard
WORKDIR /var/lib/distillguard
EXPOSE 8000
# Liveness only (see gateway/routes_ops.py): /readyz is for the load balancer, not a restart.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('DISTILLGUARD_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["distillguard"]
CMD ["serve", "--workers", "2"]
