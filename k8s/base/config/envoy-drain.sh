#!/bin/bash
# Drains Envoy before it stops: the envoy container's preStop hook (k8s/base/deployment.yaml),
# also usable in front of any `kill -TERM` of a standalone Envoy. SIGTERM alone would close
# every connection at once, in-flight completions and SSE streams included.
#
#   1. POST /healthcheck/fail: /ready (the readiness probe) and /healthz answer 503, so the pod
#      leaves the Service's endpoints and balancers stop sending, while Envoy still serves.
#   2. after DRAIN_ENDPOINT_GRACE_SECONDS (time for the endpoint removal to reach every
#      kube-proxy / load balancer): POST /drain_listeners?graceful&inboundonly. For
#      --drain-time-s, connections are told to close (HTTP/1.1 `Connection: close`, HTTP/2
#      GOAWAY); then the gateway listener closes and new connections are refused (they go to
#      other pods). The ops listener (probes, metrics) is outbound and keeps serving.
#   3. wait until no request is in flight on the gateway listener, for at most
#      DRAIN_MAX_WAIT_SECONDS (keep it below terminationGracePeriodSeconds); then the kubelet
#      sends SIGTERM. MCP GET streams still open then are cut; clients resume them.
#
# Needs only bash (its /dev/tcp): the envoyproxy/envoy image has no curl.
set -u

ADMIN_HOST="${ENVOY_ADMIN_HOST:-127.0.0.1}"
ADMIN_PORT="${ENVOY_ADMIN_PORT:-9901}"
STAT_PREFIX="${ENVOY_STAT_PREFIX:-agent_gateway}"
ENDPOINT_GRACE="${DRAIN_ENDPOINT_GRACE_SECONDS:-5}"
DRAIN_TIME="${DRAIN_TIME_SECONDS:-45}"  # = envoy --drain-time-s
MAX_WAIT="${DRAIN_MAX_WAIT_SECONDS:-600}"

say() { printf 'envoy-drain: %s\n' "$*" >&2; }

# admin METHOD PATH: the admin answer's body on stdout; non-zero if Envoy cannot be reached.
admin() {
  local answer
  exec 3<>"/dev/tcp/$ADMIN_HOST/$ADMIN_PORT" || return 1
  printf '%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1" "$2" >&3
  answer="$(cat <&3)"
  exec 3<&-
  printf '%s' "${answer#*$'\r\n\r\n'}"
}

active_requests() {
  admin GET "/stats?filter=^http\\.${STAT_PREFIX}\\.downstream_rq_active\$" | sed -n 's/.*: *\([0-9]*\).*/\1/p'
}

start=$SECONDS
admin POST /healthcheck/fail >/dev/null || { say "Envoy's admin is unreachable: nothing to drain"; exit 0; }
say "health check failed; waiting ${ENDPOINT_GRACE}s for the endpoint to leave the Service"
sleep "$ENDPOINT_GRACE"
admin POST '/drain_listeners?graceful&inboundonly' >/dev/null
say "draining listeners for ${DRAIN_TIME}s"
sleep "$DRAIN_TIME"
while (( SECONDS - start < MAX_WAIT )); do
  active="$(active_requests)" || break
  [[ "${active:-0}" == 0 ]] && break
  say "${active} requests still in flight"
  sleep 1
done
say "drained after $((SECONDS - start))s (in flight: ${active:-0})"
