#!/usr/bin/env bash
# The gateway of this checkout beside LiteLLM and two bare passthrough floors, in one run of
# ../shared/tools/peer_gateways.sh (see /work/shared/tools/README.md).
#   bash benchmarks/peer_run.sh            # SQLite log
#   PEER_PG=1 bash benchmarks/peer_run.sh  # PostgreSQL log (synchronous_commit on), a fresh db
# Settings: the script's own (DUR, STREAM_DUR, PACED_DUR, ROUNDS); results in
# $PEER_DIR/results/<timestamp>/table.md.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}   # the project's virtualenv (override with PY=...)
SHARED=${SHARED:-$REPO/../shared}   # the shared folder beside the checkout
export PYTHONPATH=$REPO/src
PEER_DIR=${PEER_DIR:-$(mktemp -d)}
export DISTILLGUARD_HOME=$PEER_DIR/dghome
export DISTILLGUARD_ADMIN_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
if [ "${PEER_PG:-0}" = 1 ]; then
  DB=dg_peer_$$
  "$PY" -c "import psycopg; c=psycopg.connect('postgresql://postgres@127.0.0.1:5432/test', autocommit=True); c.execute('CREATE DATABASE $DB')"
  export DISTILLGUARD_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/$DB
fi
"$PY" -m distillguard db migrate >/dev/null
"$PY" -m distillguard accounts create peer-bench >/dev/null
KEY=$("$PY" -m distillguard keys create peer-bench --rpm 1000000000 --tpm 2000000000 --secret-only)
echo "peer dir: $PEER_DIR  database: ${DISTILLGUARD_DATABASE_URL:-sqlite}  load: $(cut -d' ' -f1-3 /proc/loadavg)"
cd "$PEER_DIR"
EXTRA_NAME=distillguard EXTRA_PORT=${EXTRA_PORT:-4002} EXTRA_KEY=$KEY \
EXTRA_CMD="$PY -m distillguard serve --upstream http://127.0.0.1:${MOCK_PORT:-9000}/v1 --port ${EXTRA_PORT:-4002} --watermark off" \
  bash "$SHARED/tools/peer_gateways.sh"
