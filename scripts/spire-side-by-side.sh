#!/usr/bin/env bash
# Side-by-side: SPIRE v1.13.3's agent and trustgate's agent on loopback, on
# the same machine in the same run, each with a join token and the unix
# workload attestor, measured by the same go-spiffe program (bench/wlbench),
# which also checks the SVID against the API's own bundle and the JWT-SVID
# against its JWT bundles. NOT run in CI: building SPIRE takes 15 to 45
# minutes here.
#
# SPIRE is installed idempotently the only way the module proxy allows
# (it lists no versions, so `go install ...@v1.13.3` is refused): `go get
# -tool` in a scratch module, then `go install` from it.
#
# Memory: wlbench -pid reads each agent's VmRSS and its anonymous and
# file-backed parts (RssAnon, RssFile: the binary's code and read-only
# data pages that the process has mapped) idle after the first SVID, after
# the latency load, and with ENTRIES more entries (default 1000; 0 skips)
# once the workload's stream holds all their SVIDs. Both agents run from a
# fresh copy of their binary in WORKDIR, so that their file-backed pages
# have the same page-cache history: pages of a file that the linker has
# just written are mapped in larger blocks than those of a copied or
# cold file, which inflated trustgate's RSS by about 6 MB when it ran from
# its fresh build and SPIRE's from an installed binary.
#
# Usage: scripts/spire-side-by-side.sh [WORKDIR]   (default /tmp/spire-side-by-side)
# SKIP_SPIRE=1 runs and measures trustgate's agent only.
set -euo pipefail

SPIRE_VERSION=v1.13.3
entries=${ENTRIES:-1000}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/spire-side-by-side}
gobin=$(go env GOPATH)/bin
mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# --- SPIRE, installed once -----------------------------------------------
if [ -z "${SKIP_SPIRE:-}" ] && ! "$gobin/spire-agent" --version 2>&1 | grep -q "${SPIRE_VERSION#v}"; then
	echo "installing SPIRE $SPIRE_VERSION (15-45 min)..." >&2
	mod="$work/spire-mod"
	mkdir -p "$mod"
	(cd "$mod" && { [ -f go.mod ] || go mod init spire-side-by-side >/dev/null; } &&
		go get -tool "github.com/spiffe/spire/cmd/spire-agent@$SPIRE_VERSION" "github.com/spiffe/spire/cmd/spire-server@$SPIRE_VERSION" &&
		go install github.com/spiffe/spire/cmd/spire-agent github.com/spiffe/spire/cmd/spire-server)
fi

# --- builds -------------------------------------------------------------
(cd "$repo" && go build -o "$work/trustgate.build" ./cmd/trustgate && go build -o "$work/wlbench" ./bench/wlbench)
rm -f "$work/trustgate" "$work/spire-agent"
cp "$work/trustgate.build" "$work/trustgate"
[ -n "${SKIP_SPIRE:-}" ] || cp "$gobin/spire-agent" "$work/spire-agent"
tg="$work/trustgate"
uid=$(id -u)

wait_for() { # wait_for FILE SECONDS
	for _ in $(seq $(($2 * 20))); do [ -e "$1" ] && return 0; sleep 0.05; done
	echo "timed out waiting for $1" >&2; return 1
}

if [ -z "${SKIP_SPIRE:-}" ]; then
# --- SPIRE ----------------------------------------------------------------
sd="$work/spire"; rm -rf "$sd"; mkdir -p "$sd"
cat >"$sd/server.conf" <<CONF
server {
  bind_address = "127.0.0.1"
  bind_port = "18081"
  socket_path = "$sd/server.sock"
  trust_domain = "example.org"
  data_dir = "$sd/server-data"
  log_level = "WARN"
}
plugins {
  DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "$sd/server-data/datastore.sqlite3" } }
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
}
CONF
cat >"$sd/agent.conf" <<CONF
agent {
  data_dir = "$sd/agent-data"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "18081"
  socket_path = "$sd/agent.sock"
  insecure_bootstrap = true
  trust_domain = "example.org"
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
  WorkloadAttestor "unix" { plugin_data {} }
}
CONF
"$gobin/spire-server" run -config "$sd/server.conf" >"$sd/server.log" 2>&1 & pids+=($!)
wait_for "$sd/server.sock" 30
until "$gobin/spire-server" healthcheck -socketPath "$sd/server.sock" >/dev/null 2>&1; do sleep 0.1; done
"$gobin/spire-server" entry create -socketPath "$sd/server.sock" -parentID spiffe://example.org/spire-agent \
	-spiffeID spiffe://example.org/workload -selector "unix:uid:$uid" >/dev/null
tok=$("$gobin/spire-server" token generate -socketPath "$sd/server.sock" -spiffeID spiffe://example.org/spire-agent | awk '{print $2}')
"$work/spire-agent" run -config "$sd/agent.conf" -joinToken "$tok" >"$sd/agent.log" 2>&1 & pids+=($!)
spire_agent_pid=$!

fi

# --- trustgate ------------------------------------------------------------
td="$work/trustgate-run"; rm -rf "$td"; mkdir -p "$td"
"$tg" server --print-default-config | awk -v d="$td" '
	/^\[/ { sec = $0 }
	/^listen = / && sec == "" { print "listen = \"127.0.0.1:18443\""; next }
	/^bundle_file = / { print "bundle_file = \"" d "/bundle.pem\""; next }
	/^path = / && sec == "[store]" { print "path = \"" d "/trustgate.db\""; next }
	/^seal_key_file = / { print "seal_key_file = \"" d "/seal.key\""; next }
	/^socket_path = / && sec == "[admin]" { print "socket_path = \"" d "/admin.sock\""; next }
	/^public_key_file = / { print "public_key_file = \"" d "/admin.pub\""; next }
	/^enabled = / && sec == "[plugins.svid]" { print "enabled = true"; next }
	{ print }' >"$td/server.toml"
"$tg" server --create-seal-key --config "$td/server.toml"
"$tg" admin key create --config "$td/server.toml" --key "$td/admin.key" >/dev/null
"$tg" server --config "$td/server.toml" --log-level warn >"$td/server.log" 2>&1 & pids+=($!)
wait_for "$td/admin.sock" 30
wait_for "$td/bundle.pem" 30
"$tg" jointoken create --socket "$td/admin.sock" | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' >"$td/join-token"
agent_id="spiffe://example.org/spire/agent/join_token/$(cat "$td/join-token")"
"$tg" entry create --socket "$td/admin.sock" --parentID "$agent_id" --spiffeID spiffe://example.org/workload --selector "unix:uid:$uid" >/dev/null
"$tg" agent --print-default-config | awk -v d="$td" '
	/^broker_url = / { print "broker_url = \"https://127.0.0.1:18443\""; next }
	/^trust_bundle_path = / { print "trust_bundle_path = \"" d "/bundle.pem\""; next }
	/^data_dir = / { print "data_dir = \"" d "/agent-data\""; next }
	/^socket_path = / { print "socket_path = \"" d "/agent.sock\""; next }
	/^join_token_file = / { print "join_token_file = \"" d "/join-token\""; next }
	{ print }' >"$td/agent.toml"
"$tg" agent --config "$td/agent.toml" --log-level warn >"$td/agent.log" 2>&1 & pids+=($!)
tg_agent_pid=$!

# --- measure --------------------------------------------------------------
# more_entries AGENT: ENTRIES entries for the workload under AGENT's ID.
more_entries() {
	if [ "$1" = spire ]; then
		seq "$entries" | awk -v uid="$uid" 'BEGIN { printf "{\"entries\": [" }
			{ printf "%s{\"spiffe_id\": \"spiffe://example.org/w/%d\", \"parent_id\": \"spiffe://example.org/spire-agent\", \"selectors\": [{\"type\": \"unix\", \"value\": \"uid:%d\"}]}", (NR > 1 ? "," : ""), $1, uid }
			END { print "]}" }' >"$sd/entries.json"
		"$gobin/spire-server" entry create -socketPath "$sd/server.sock" -data "$sd/entries.json" >/dev/null
	else
		seq "$entries" | xargs -P 4 -I{} "$tg" entry create --socket "$td/admin.sock" --parentID "$agent_id" \
			--spiffeID "spiffe://example.org/w/{}" --selector "unix:uid:$uid" >/dev/null
	fi
}
# measure NAME SOCKET PID: latency and memory, then memory with more entries.
measure() {
	wait_for "$2" 60
	"$work/wlbench" -socket "$2" -pid "$3" >"$work/$1.tsv"
	if [ "$entries" -gt 0 ]; then
		more_entries "$1"
		# Memory only: the time is not comparable here (SPIRE's entries
		# come in one batch call, trustgate's from one CLI run each);
		# BenchmarkAgentThousandEntries measures trustgate's.
		"$work/wlbench" -socket "$2" -pid "$3" -svids $((entries + 1)) -wait 300s |
			sed -n 's/^svids_[0-9]*_\(.*_mb\)/entries_\1/p' >>"$work/$1.tsv"
	fi
}
measure trustgate "$td/agent.sock" "$tg_agent_pid"
if [ -n "${SKIP_SPIRE:-}" ]; then
	cat "$work/trustgate.tsv"
	exit 0
fi
measure spire "$sd/agent.sock" "$spire_agent_pid"

printf '%-16s %12s %12s %8s\n' metric spire trustgate ratio
join -t $'\t' <(sort "$work/spire.tsv") <(sort "$work/trustgate.tsv") |
	awk -F'\t' '{ r = ($2 > 0) ? $3 / $2 : 0; printf "%-16s %12s %12s %8.2f\n", $1, $2, $3, r }'
