#!/bin/sh
# As the official image does: without a config file Redis's protected mode would refuse every
# client from another container, so it is off (the port is reachable on the compose network
# only: compose.yaml publishes none for redis). Runs as the redis user, as PID 1.
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
fi
exec "$@"
