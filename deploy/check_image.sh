#!/usr/bin/env bash
# Build the gateway image, start the compose stack (gateway, PostgreSQL, Redis, and a stand-in
# engine) and check it answers: /healthz, /readyz, and an authenticated chat completion through
# the official `openai` SDK from the host. Prints each step's figures (build time, image size);
# stops and removes the check's stack and volumes at the end (KEEP=1 leaves it running).
#
#   deploy/check_image.sh              # a machine that reaches Docker Hub and PyPI
#   deploy/check_image.sh --offline    # no Docker Hub: a Debian base from debootstrap, and
#                                      # PostgreSQL/Redis from Debian's packages
#
# Environment (all optional):
#   BASE_IMAGE        the Dockerfile's base (default: its own, or distillguard-base:bookworm
#                     with --offline, built here first when missing; needs debootstrap)
#   DEBIAN_MIRROR     for debootstrap and the offline images (default http://deb.debian.org/debian)
#   TORCH_INDEX_URL   the Dockerfile's argument (default: its own, PyTorch's CPU index)
#   BUILD_PIP_INDEX_URL, BUILD_PIP_EXTRA_INDEX_URL, BUILD_PIP_FIND_LINKS
#                     passed to `docker build` as PIP_INDEX_URL etc. (see the Dockerfile);
#                     named apart so that this machine's own PIP_* settings never reach the
#                     build. The build runs with --network host: a server on 127.0.0.1 works.
#   PIP_CA            a CA bundle (PEM) for pip inside the build, passed as the build secret
#                     pip_ca: for an egress proxy that re-signs TLS (e.g. /etc/ssl/certs/
#                     ca-certificates.crt where the proxy's CA is installed on the host)
#   WHEEL_DIR         shortcut without PyTorch's index: serve this directory (holding the torch
#                     CPU wheel) over HTTP on 127.0.0.1:WHEEL_PORT (default 18801) during the
#                     build, as BUILD_PIP_FIND_LINKS, with TORCH_INDEX_URL=https://pypi.org/simple
#                     (pip then prefers the local 2.13.0+cpu; the Dockerfile refuses a CUDA torch)
#   CHECK_PORT        host port the gateway is published on (127.0.0.1 only; default 18800)
#   PYTHON            a python with the `openai` package, for the client (default python3)
#   KEEP=1            leave the stack running (docker compose -p distillguard-check ... down -v)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OFFLINE=""
[ "${1:-}" = "--offline" ] && OFFLINE=yes
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CHECK_PORT=${CHECK_PORT:-18800}
WHEEL_PORT=${WHEEL_PORT:-18801}
PYTHON=${PYTHON:-python3}
IMAGE=distillguard:0.1.0
PROJECT=distillguard-check
WORK=$(mktemp -d /tmp/dg-image-check.XXXXXX)
PIDS=()
step() { echo "check_image [$(date -u +%H:%M:%S)]: $*"; }
fail() { echo "check_image: FAILED: $*" >&2; exit 1; }
compose() {
  local files=(-f compose.yaml)
  [ -n "$OFFLINE" ] && files+=(-f deploy/compose.offline.yaml)
  (cd "$WORK/stack" && CHECK_PORT=$CHECK_PORT docker compose -p "$PROJECT" "${files[@]}" \
    -f deploy/compose.check.yaml "$@")
}
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -d "$WORK/stack" ] && [ -z "${KEEP:-}" ]; then
    compose logs --no-color >"$WORK/stack.log" 2>&1 || true
    compose down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  [ -z "${KEEP:-}" ] && rm -rf "$WORK"
  return 0
}
trap cleanup EXIT

docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info)"
docker compose version >/dev/null 2>&1 || fail "no compose plugin (docker compose version)"
"$PYTHON" -c "import openai" 2>/dev/null || fail "$PYTHON has no openai package (set PYTHON)"
step "engine $(docker version -f '{{.Server.Version}}'), $(docker compose version --short 2>/dev/null || true) compose"

# --- the base image (offline: Debian bookworm from debootstrap, no registry) ------------------
BUILD_ARGS=()
if [ -n "$OFFLINE" ]; then
  BASE_IMAGE=${BASE_IMAGE:-distillguard-base:bookworm}
  if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || fail "debootstrap missing (apt-get install debootstrap)"
    step "building $BASE_IMAGE with debootstrap from $MIRROR"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
      bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | docker import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
  fi
fi
[ -n "${BASE_IMAGE:-}" ] && BUILD_ARGS+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
if [ -n "${WHEEL_DIR:-}" ]; then
  "$PYTHON" -m http.server "$WHEEL_PORT" --bind 127.0.0.1 --directory "$WHEEL_DIR" \
    >"$WORK/wheels.log" 2>&1 &
  PIDS+=($!)
  BUILD_PIP_FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/
  TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://pypi.org/simple}
  sleep 1
fi
[ -n "${PIP_CA:-}" ] && BUILD_ARGS+=(--secret "id=pip_ca,src=$PIP_CA")
[ -n "${TORCH_INDEX_URL:-}" ] && BUILD_ARGS+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS; do
  value=BUILD_$name
  [ -n "${!value:-}" ] && BUILD_ARGS+=(--build-arg "$name=${!value}")
done

# --- the gateway image --------------------------------------------------------------------
step "docker build -t $IMAGE ${BUILD_ARGS[*]}"
start=$(date +%s)
docker build --network host "${BUILD_ARGS[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log"; fail "docker build"; }
build_s=$(($(date +%s) - start))
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
step "built $IMAGE in ${build_s}s, $((size / 1000000)) MB ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c8-19))"
docker run --rm "$IMAGE" --help >/dev/null || fail "the image's entry point does not run"
docker run --rm --entrypoint python "$IMAGE" -c \
  "import torch, distillguard, pathlib; assert not torch.version.cuda; print('torch', torch.__version__, 'distillguard from', pathlib.Path(distillguard.__file__).parent)"
[ "$(docker run --rm --entrypoint id "$IMAGE" -u)" = 10001 ] || fail "the image runs as root"

# --- the stack, from a copy holding fresh secrets (never the repo's own env files) ---------
mkdir -p "$WORK/stack/deploy" "$WORK/stack/.ci"
cp compose.yaml "$WORK/stack/"
cp -r deploy/distillguard.toml deploy/compose.offline.yaml deploy/compose.check.yaml deploy/offline \
  "$WORK/stack/deploy/"
cp .ci/stub_upstream.py "$WORK/stack/.ci/"
DB_PASSWORD=$("$PYTHON" -c "import secrets; print(secrets.token_hex(16))")
ADMIN=$("$PYTHON" -c "import secrets; print(secrets.token_urlsafe(32))")
printf 'POSTGRES_USER=distillguard\nPOSTGRES_PASSWORD=%s\nPOSTGRES_DB=distillguard\n' \
  "$DB_PASSWORD" >"$WORK/stack/deploy/postgres.env"
printf 'DISTILLGUARD_DATABASE_URL=postgresql+psycopg://distillguard:%s@postgres:5432/distillguard\nDISTILLGUARD_ADMIN_TOKEN=%s\n' \
  "$DB_PASSWORD" "$ADMIN" >"$WORK/stack/deploy/gateway.env"
if [ -n "$OFFLINE" ]; then
  step "building the offline PostgreSQL and Redis images (Debian packages on $BASE_IMAGE)"
  compose build postgres redis >"$WORK/build-services.log" 2>&1 \
    || { tail -30 "$WORK/build-services.log"; fail "offline service images"; }
fi
step "docker compose up (project $PROJECT, gateway on 127.0.0.1:$CHECK_PORT)"
start=$(date +%s)
compose up -d --no-build --wait --wait-timeout 240 \
  || { compose ps -a; compose logs --no-color --tail 40; fail "compose up"; }
step "stack healthy after $(($(date +%s) - start))s:"
compose ps --format '  {{.Service}}: {{.Image}} {{.Status}}'

URL=http://127.0.0.1:$CHECK_PORT
step "GET /healthz: $(curl -sS "$URL/healthz")"
ready=$(curl -sS -w ' (%{http_code})' -H "authorization: Bearer $ADMIN" "$URL/readyz")
step "GET /readyz: $ready"
case "$ready" in *"(200)") ;; *) fail "/readyz is not 200" ;; esac

compose exec -T gateway distillguard accounts create alice >/dev/null
KEY=$(compose exec -T gateway distillguard keys create alice --alias image-check --secret-only | tr -d '\r')
[ -n "$KEY" ] || fail "no key from distillguard keys create"
step "account alice and a key created in the container (PostgreSQL)"

DG_URL=$URL DG_KEY=$KEY "$PYTHON" - <<'PY'
import os

import openai

client = openai.OpenAI(base_url=os.environ["DG_URL"] + "/v1", api_key=os.environ["DG_KEY"])
models = [m.id for m in client.models.list()]
raw = client.chat.completions.with_raw_response.create(
    model=models[0], messages=[{"role": "user", "content": "ping from the host"}]
)
answer = raw.parse()
print(f"  models: {models}")
print(f"  answer: {answer.choices[0].message.content!r} usage={answer.usage.total_tokens}")
print(f"  x-ratelimit-remaining-requests: {raw.headers.get('x-ratelimit-remaining-requests')}")
try:
    openai.OpenAI(base_url=os.environ["DG_URL"] + "/v1", api_key="sk-wrong").models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError as error:
    print(f"  a wrong key: {error.status_code} {error.code}")
PY
rows=$(compose exec -T postgres psql -U distillguard -d distillguard -tAc "select count(*) from exchanges" 2>/dev/null || echo "?")
step "exchange rows in PostgreSQL: $rows"
# Prometheus (admin token): the chat just answered, counted across the two workers
metrics=$(curl -sS -H "authorization: Bearer $ADMIN" "$URL/metrics")
step "metrics, distillguard_requests_total:"
grep '^distillguard_requests_total' <<<"$metrics" | sed 's/^/  /'
grep -q '^distillguard_requests_total{.*chat.*model="stub-model".*} 1' <<<"$metrics" \
  || fail "/metrics does not count the chat completion"

# Readiness follows the dependencies: Redis stopped -> 503 naming it, back -> 200.
compose stop redis >/dev/null 2>&1
down=$(curl -sS -w ' (%{http_code})' "$URL/readyz")
compose start redis >/dev/null 2>&1
step "GET /readyz with redis stopped: $down"
case "$down" in *redis*"(503)") ;; *) fail "/readyz did not report redis down" ;; esac
for _ in $(seq 30); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ] && break
  sleep 1
done
step "GET /readyz after redis restarted: $(curl -sS -w ' (%{http_code})' "$URL/readyz")"
# State lives in PostgreSQL, not in the gateway container: a recreated gateway takes the key.
compose up -d --no-build --force-recreate --wait --wait-timeout 240 gateway >/dev/null 2>&1 \
  || fail "the recreated gateway did not become healthy"
again=$(curl -sS -w ' (%{http_code})' -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"model": "stub-model", "messages": [{"role": "user", "content": "again"}]}' \
  "$URL/v1/chat/completions")
step "chat after the gateway container was recreated: $(grep -o '"content": "[^"]*"' <<<"$again") ${again##* }"
case "$again" in *"stub answer to: again"*"(200)") ;; *) fail "the key did not survive" ;; esac
step "OK"
if [ -n "${KEEP:-}" ]; then
  echo "left running; stop with: cd $WORK/stack && docker compose -p $PROJECT -f compose.yaml" \
    "${OFFLINE:+-f deploy/compose.offline.yaml }-f deploy/compose.check.yaml down -v"
fi
