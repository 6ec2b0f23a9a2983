#!/usr/bin/env bash
# Wheel smoke test: build the wheel, install it (not editable) into a clean virtualenv, start
# `distillguard serve --upstream <stub>` from that install with the online monitor on, and get
# one authenticated chat completion through it. Catches what an editable install hides: a
# module or data file (e.g. monitor/score_model.json) missing from the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-python3.11}
WORK=$(mktemp -d /tmp/dg-wheel-smoke.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
step() { echo "wheel smoke: $*"; }

step "building the wheel"
"$PY" -m pip wheel -q --no-deps --disable-pip-version-check --wheel-dir "$WORK/dist" "$REPO"
WHEEL=$(ls "$WORK"/dist/distillguard-*.whl)

step "installing $(basename "$WHEEL") into a clean virtualenv (torch first: the CPU build)"
"$PY" -m venv "$WORK/venv"
# --no-compile: byte-compiling every dependency is most of an install's time, and unneeded here.
"$WORK/venv/bin/pip" install -q --no-compile --disable-pip-version-check torch==2.13.0
"$WORK/venv/bin/pip" install -q --no-compile --disable-pip-version-check "$WHEEL"

# Run from outside the checkout: only the installed package can be imported.
cd "$WORK"
"$WORK/venv/bin/python" - <<'PY'
import distillguard, pathlib
where = pathlib.Path(distillguard.__file__).resolve()
assert "site-packages" in where.parts, f"distillguard imported from {where}, not the wheel"
PY

step "starting the stub upstream and the gateway"
"$WORK/venv/bin/python" "$REPO/.ci/stub_upstream.py" "$WORK/stub.port" &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/stub.port" ] && break; sleep 0.1; done
STUB_PORT=$(cat "$WORK/stub.port")
PORT=$("$WORK/venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export DISTILLGUARD_HOME="$WORK/home"
export DISTILLGUARD_ADMIN_TOKEN="smoke-admin-$RANDOM$RANDOM"
export DISTILLGUARD_ONLINE_MONITOR=true
# the stub is not a marking engine: say so (--upstream with a watermark is refused otherwise)
"$WORK/venv/bin/distillguard" serve --upstream "http://127.0.0.1:$STUB_PORT/v1" \
  --watermark off --port "$PORT" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
GATEWAY=$!
up=""
for _ in $(seq 120); do
  if ! kill -0 "$GATEWAY" 2>/dev/null; then break; fi
  if "$WORK/venv/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/healthz', timeout=1)" 2>/dev/null; then
    up=yes; break
  fi
  sleep 0.5
done
if [ -z "$up" ]; then
  echo "wheel smoke: the gateway did not come up; its log:" >&2
  cat "$WORK/gateway.log" >&2
  exit 1
fi

step "one authenticated chat request through the gateway (monitor on)"
"$WORK/venv/bin/python" - "$PORT" <<'PY'
import os, sys, urllib.request, json
from openai import OpenAI

base = f"http://127.0.0.1:{sys.argv[1]}"
admin = {"Authorization": f"Bearer {os.environ['DISTILLGUARD_ADMIN_TOKEN']}",
         "Content-Type": "application/json"}

def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), admin, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)

account = post("/admin/accounts", {"name": "wheel-smoke"})
key = post("/admin/keys", {"account": account["id"]})
client = OpenAI(base_url=base + "/v1", api_key=key["secret"], max_retries=0, timeout=20)
reply = client.chat.completions.create(
    model="stub-model", messages=[{"role": "user", "content": "ping"}]
)
answer = reply.choices[0].message.content
assert answer == "stub answer to: ping", answer
print(f"wheel smoke: answered {answer!r}")
PY
"$WORK/venv/bin/python" - "$WORK/gateway.log" <<'PY' || { cat "$WORK/gateway.log" >&2; exit 1; }
import json, sys
ready = [json.loads(line) for line in open(sys.argv[1]) if '"gateway ready"' in line]
assert ready and ready[0].get("monitor") is True, "the gateway did not start its online monitor"
print("wheel smoke: the gateway served with the online monitor on")
PY
step "ok"
