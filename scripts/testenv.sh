#!/usr/bin/env bash
# `make testenv` / `make testenv-down`: the test environment in the background.
set -euo pipefail
cd "$(dirname "$0")/.."
base=target/testenv
pidfile=$base/testenv.pid
case "${1:-}" in
up)
  if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "testenv already running (pid $(cat "$pidfile")); source $base/env"; exit 0
  fi
  cargo build -q -p servicelog-e2e --bin servicelog-testenv
  mkdir -p $base
  rm -f $base/env
  nohup "${CARGO_TARGET_DIR:-target}/debug/servicelog-testenv" >$base/testenv.log 2>&1 &
  pid=$!
  for _ in $(seq 1 240); do
    if [[ -f $base/env ]]; then cat $base/testenv.log; exit 0; fi
    if ! kill -0 $pid 2>/dev/null; then
      echo "testenv failed to start:" >&2; cat $base/testenv.log >&2; exit 1
    fi
    sleep 0.5
  done
  echo "testenv: timed out after 120s waiting for $base/env; log:" >&2
  cat $base/testenv.log >&2; kill $pid 2>/dev/null || true; exit 1
  ;;
down)
  if [[ -f $pidfile ]]; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile" $base/env
    echo "testenv stopped"
  else
    echo "testenv is not running"
  fi
  ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
