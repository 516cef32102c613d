#!/usr/bin/env bash
# The scaling and fault harness (issue 22, docs/deployment.md "Scaling"): the rehearsal's hosts
# with a three-node NATS cluster (R3 streams), two replicas of graph, document, agent, workflow,
# webhook, gateway and websocket, the Postgres, Redis and blackbox exporters and a Prometheus with
# the repository's rules, faults one at a time (or two overlapping) under a recorded load, and
# after each the checks that nothing acknowledged was lost or duplicated, no websocket client
# missed or repeated an event, a rate limit held across both gateways and the expected alerts
# showed.
# tests/deploy/faults.py does the work; scripts/rehearse.sh installs the tools, builds `cim`,
# runs it and tears everything down on any exit (same needs: root, the same tool caches).
#
#   scripts/faults.sh            the bounded run of the suite: one fault of each kind (~3 min)
#   scripts/faults.sh --heavy    every replica killed, every fault, mixed faults, longer windows,
#                                more tenants
#   --out FILE                   where the fault table goes as JSON (default /var/tmp/cim-faults.json)
#   --only kill:graph2,...       only these faults of the set, named fault:host as in the table
# CIM_REHEARSE_BIN=<path to cim> skips the build; CIM_REHEARSE_KEEP_LOGS=1 keeps every log.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec bash "$ROOT/scripts/rehearse.sh" --harness faults "$@"
