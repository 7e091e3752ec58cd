#!/bin/sh
# The kernel-matrix smoke run: `cargo xtask test --kernel K` boots K and runs
# this as root inside it (the host's filesystem, this checkout's release
# agent). One agent start (loading is minutes under emulation), then one
# workload per signal; xtask parses the sections below and asserts on them.
# Runs on the host too: `sudo sh tests/vm/smoke.sh`.
set -u
AGENT=${AGENT:-target/release/agent}
W=$(mktemp -d /tmp/agent-smoke.XXXXXX)
mark() { echo "=== xtask-smoke: $1"; }

mark check
"$AGENT" check --probe --format json 2>/dev/null | tr -d '\n'; echo

mark start
t0=$(cut -d' ' -f1 /proc/uptime)
"$AGENT" --format json --all-execs --output "$W/records.json" ${AGENT_ARGS:-} 2>"$W/agent.err" &
A=$!
while ! grep -q "agent: watching" "$W/agent.err" 2>/dev/null; do
  kill -0 $A 2>/dev/null || break
  sleep 1
done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "load_seconds=$(echo "$t1 $t0" | awk '{printf "%.1f", $1 - $2}')"

# exit: a process that exits 3.
sh -c 'exit 3'
# exec (failed): ENOENT through the caller's pointers (sys_exit_execve).
/nonexistent/smoke-missing --flag 2>/dev/null
# exec (toolchain): a real Go, with an allow-listed variable.
GO=$(command -v go || true)
[ -n "$GO" ] && GOFLAGS=-v "$GO" version >/dev/null 2>&1
# tcp_connect: refused on loopback.
python3 -c 'import socket; s=socket.socket(); s.settimeout(2); print(s.connect_ex(("127.0.0.1", 1)))' >/dev/null
# wire (TLS): a real OpenSSL handshake on loopback.
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=smoke.test -keyout "$W/k.pem" -out "$W/c.pem" -days 1 2>/dev/null
openssl s_server -accept 127.0.0.1:18443 -cert "$W/c.pem" -key "$W/k.pem" -www -quiet >/dev/null 2>&1 &
S=$!
sleep 2
echo | timeout 10 openssl s_client -connect 127.0.0.1:18443 -servername smoke.test -CAfile "$W/c.pem" >/dev/null 2>&1
kill $S 2>/dev/null
sleep 3
kill -INT $A
wait $A
echo "agent_exit=$?"

mark agent-stderr
cat "$W/agent.err"
mark records
cat "$W/records.json"
mark end
rm -rf "$W"
