#!/usr/bin/env bash
# Runs hipsterd on configs/hipster.ini in front of two demo backends, shows a
# few proxied requests, then keeps serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
./hipster-demo 127.0.0.1:8001 127.0.0.1:8002 & pids+=($!)
./hipsterd -config configs/hipster.ini & pids+=($!)
for _ in $(seq 50); do
	curl -fs -o /dev/null http://127.0.0.1:9000/ 2>/dev/null && break
	sleep 0.1
done
echo
echo "== four requests through hipsterd (round-robin over demo1 and demo2):"
for i in 1 2 3 4; do curl -s "http://127.0.0.1:9000/hello?n=$i"; done
echo "== a request for demo.localhost (routed by its [host] section):"
curl -s -H 'Host: demo.localhost' http://127.0.0.1:9000/
echo "== the access log (hipsterd-access.log) so far is flushed within a second."
echo "hipsterd is serving on http://127.0.0.1:9000/ — press Ctrl-C to stop."
wait "${pids[1]}"
