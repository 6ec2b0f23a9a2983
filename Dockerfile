# The distillguard gateway image: `docker build -t distillguard:0.1.0 .` (or `docker compose
# build`). Built and run on 2026-12-01 (docker 20.10, docs/deploy.md "What has run where";
# deploy/check_image.sh repeats it); tests/deploy/test_container.py checks what it names exists.
#
# Build arguments (all optional; the defaults are the public ones):
#   BASE_IMAGE       any Debian/Ubuntu image with python3.11 and its venv module. Default: the
#                    official python image. A machine without Docker Hub builds its own base
#                    (deploy/check_image.sh: debootstrap + `docker import`) and passes it here.
#   TORCH_INDEX_URL  where torch==2.13.0 comes from: PyTorch's CPU index by default (PyPI's
#                    default torch wheel pulls several GB of CUDA libraries the gateway never
#                    uses). A mirror of it, or PyPI plus PIP_FIND_LINKS naming a CPU wheel.
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS
#                    pip's own variables, for a PyPI mirror or a local wheel directory served
#                    over HTTP (build with --network host to reach one on the build machine).
#                    Unset by default: pip then uses PyPI.
# Build secret (optional): `--secret id=pip_ca,src=CA_BUNDLE.pem`: the CA bundle pip trusts,
#   for a network whose egress proxy re-signs TLS (pip otherwise trusts only its own certifi
#   bundle and fails with CERTIFICATE_VERIFY_FAILED). A secret, so it stays out of the image.
# No `# syntax=` line on purpose: it makes BuildKit pull its frontend from Docker Hub; the
# frontend built into Docker 20.10+ has everything used here (RUN --mount=type=secret).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- builder: the wheel, from the sources only ------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A virtualenv in both stages: the same paths whether the base's python is /usr/local/bin/python
# (official image) or Debian's /usr/bin/python3 (which refuses a system-wide pip install).
RUN python3 -m venv /opt/build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/distillguard/bin:$PATH \
    DISTILLGUARD_HOME=/var/lib/distillguard \
    DISTILLGUARD_CONFIG=/etc/distillguard/distillguard.toml \
    DISTILLGUARD_HOST=0.0.0.0 \
    DISTILLGUARD_PORT=8000
RUN python3 -m venv /opt/distillguard
# torch first, pinned as the Makefile pins it, from the CPU index; the wheel's own pins then
# find torch==2.13.0 already installed.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL" \
    && python -c "import torch; assert not torch.version.cuda, 'a CUDA torch: use the CPU index'"
COPY --from=builder /wheels /wheels
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install /wheels/*.whl && rm -rf /wheels
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
