#!/usr/bin/env bash
# Runs hipsterd on configs/hipster.ini in front of two demo backends, shows a
# few proxied requests, then keeps serving until Ctrl-C. If a backend or
# hipsterd cannot start (a port taken, say), it stops with that program's
# own error, before sending a request anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
pids=()
logs=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$logs"' EXIT

# started NAME PID LOG LINE: waits until the program's stderr, copied to LOG,
# has LINE; fails if the program exits first, or after 10 s.
started() {
	local name=$1 pid=$2 log=$3 line=$4
	for _ in $(seq 100); do
		grep -qs "$line" "$log" && return 0
		if ! kill -0 "$pid" 2>/dev/null; then
			local code=0
			wait "$pid" || code=$?
			echo "make demo: $name could not start (exit $code); its error is above." >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "make demo: $name did not start within 10 s." >&2
	exit 1
}

./hipster-demo 127.0.0.1:8001 127.0.0.1:8002 2> >(tee "$logs/demo" >&2) & pids+=($!)
started hipster-demo "${pids[0]}" "$logs/demo" 'demo backends ready'
./hipsterd -config configs/hipster.ini 2> >(tee "$logs/hipsterd" >&2) & pids+=($!)
# Logged once every listener is bound.
started hipsterd "${pids[1]}" "$logs/hipsterd" 'msg="hipsterd started"'

echo
echo "== four requests through hipsterd (round-robin over demo1 and demo2):"
for i in 1 2 3 4; do curl -s "http://127.0.0.1:9000/hello?n=$i"; done
echo "== a request for demo.localhost (routed by its [host] section):"
curl -s -H 'Host: demo.localhost' http://127.0.0.1:9000/
echo "== the access log (hipsterd-access.log) so far is flushed within a second."
echo "== the status page: http://127.0.0.1:8404/ (metrics on /metrics)"
echo "== WebSocket echo through hipsterd: ws://127.0.0.1:9000/ws"
echo "hipsterd is serving on http://127.0.0.1:9000/ — press Ctrl-C to stop."
wait "${pids[1]}"
