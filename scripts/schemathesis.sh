#!/usr/bin/env bash
# A bounded schemathesis run against the OpenAPI document a daemon serves:
# every operation, generated and mutated inputs, the token on every request.
# It passes only with no 5xx answer and every answer as the document says.
#
# The daemon runs in a network namespace of its own with only loopback up,
# so that nothing the generated requests ask for (an image from a made-up
# registry, an outbound URL) can leave the machine.
#
# Usage: scripts/schemathesis.sh HEARTH_BIN [SECONDS]   (root; make setup first)
set -euo pipefail
bin=$(realpath "${1:?usage: $0 HEARTH_BIN [SECONDS]}")
budget=${2:-90}
st=${HEARTH_SCHEMATHESIS:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth/schemathesis/bin/st}
if [ ! -x "$st" ]; then
	echo "schemathesis is not installed at $st: run \`make setup\`" >&2
	exit 1
fi
dir=$(mktemp -d /tmp/hearth-schemathesis.XXXXXX)
ns=hearth-st-$$
pid=
cleanup() {
	if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
port=7070
ip netns exec "$ns" "$bin" serve --data-dir "$dir/data" --cache-dir "$dir/cache" --net-prefix tst \
	--default-network false --default-network-nat false --ingress 127.0.0.1:0 \
	--listen "127.0.0.1:$port" >"$dir/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
	[ -s "$dir/data/token" ] && grep -q "Daemon ready" "$dir/daemon.log" && break
	kill -0 "$pid" 2>/dev/null || { cat "$dir/daemon.log" >&2; echo "the daemon did not start" >&2; exit 1; }
	sleep 0.1
done
token=$(cat "$dir/data/token")
echo "schemathesis: $budget s against $bin (in network namespace $ns)"
status=0
# schemathesis keeps its reports in the working directory.
cd "$dir"
ip netns exec "$ns" "$st" run "http://127.0.0.1:$port/v1/openapi.json" \
	--header "Authorization: Bearer $token" \
	--checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
	--max-time "$budget" --workers 2 --max-failures 20 --suppress-health-check all \
	--no-color || status=$?
if [ "$status" -ne 0 ]; then
	echo "--- the daemon's log, last 40 lines ---" >&2
	tail -n 40 "$dir/daemon.log" >&2
fi
exit "$status"
