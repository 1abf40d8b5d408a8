#!/usr/bin/env bash
# `make run`: start the daemon on the embedded store (unless one is already
# running on the same data dir) and show that it works.
set -euo pipefail

hearth="${HEARTH_BIN:-$(command -v hearth)}"
data_dir="${HEARTH_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/hearth}"
export HEARTH_DATA_DIR="$data_dir"

# Shows a command the way a person would type it, then runs it.
step() {
  local shown="" a
  for a in "$@"; do
    [[ "$a" == *" "* ]] && a="\"$a\""
    shown+=" $a"
  done
  printf '\n\033[1m$%s\033[0m\n' "$shown"
  "$@"
}

if "$hearth" status >/dev/null 2>&1; then
  echo "A hearth daemon is already running on $data_dir; using it."
else
  mkdir -p "$data_dir"
  echo "Starting the hearth daemon on $data_dir (log: $data_dir/daemon.log) ..."
  nohup "$hearth" serve >>"$data_dir/daemon.log" 2>&1 &
  echo $! >"$data_dir/daemon.pid"
  for _ in $(seq 1 100); do
    "$hearth" status >/dev/null 2>&1 && break
    if ! kill -0 "$(cat "$data_dir/daemon.pid")" 2>/dev/null; then
      echo "The daemon exited; the end of its log:" >&2
      tail -n 20 "$data_dir/daemon.log" >&2
      exit 1
    fi
    sleep 0.1
  done
fi

step hearth status
step hearth kv put demo/greeting "hello from hearth"
step hearth kv put demo/session "vanishes in 5 s" --ttl 5s
step hearth kv ls demo/
step hearth events --prefix kv/demo/ --limit 5

# An app: a WebAssembly component, live in well under a second.
step hearth app deploy hello examples/apps/hello/target/wasm32-wasip2/release/hello.wasm
port=$(hearth status --json | sed -n 's/.*"ingress": *"[^"]*:\([0-9]*\)".*/\1/p')
if command -v curl >/dev/null; then
  step curl -s "http://hello.localhost:${port:-8080}/"
fi

# A workflow: waits for two of three approvals, at no cost while it waits.
step hearth workflow deploy approval examples/workflows/approval/target/wasm32-wasip2/release/approval.wasm
run_id="demo-$(date +%s)"
step hearth workflow start approval --id "$run_id" --input '{"request": "a demo", "approvers": ["ann", "bob", "cid"], "timeout": "7d"}'
step hearth workflow signal "$run_id" vote --data '{"who": "ann", "approve": true}'
if command -v curl >/dev/null; then
  step curl -s -X POST "http://hooks.localhost:${port:-8080}/approval/vote?run=$run_id" -d '{"who": "bob", "approve": true}'
else
  step hearth workflow signal "$run_id" vote --data '{"who": "bob", "approve": true}'
fi
for _ in $(seq 50); do hearth workflow show "$run_id" --json | grep -q '"status": *"completed"' && break; sleep 0.1; done
step hearth workflow show "$run_id"

# A machine: the first run builds a Debian image (about a minute), later runs reuse it.
if ! hearth image ls | grep -q '^debian:bookworm '; then
  step hearth image build debian --suite bookworm
fi
if hearth machine inspect demo >/dev/null 2>&1; then
  step hearth machine start demo || true
else
  step hearth machine run --name demo debian:bookworm
fi
step hearth machine exec demo -- uname -a
step hearth machine ls

cat <<MSG

hearth is running (data dir $data_dir).
  hearth ui                 a sign-in link for the web dashboard
  hearth events -f          follow every change live
  hearth kv ls              the user key space
  curl http://hello.localhost:${port:-8080}/
                            the hello app (hearth app ls lists apps)
  hearth workflow ls        workflow runs (hearth workflow show ID for a history)
  hearth machine exec -it demo -- bash
                            a shell in the demo machine
  hearth machine rm -f demo remove it
  hearth --help             everything else
  make stop                 stop the daemon
MSG
