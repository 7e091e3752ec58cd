#!/usr/bin/env python3
"""Agent CPU per exported span and peak RSS, two agent binaries side by side.

As root: python3 tests/bench/otlp_overhead.py OLD_AGENT NEW_AGENT [N] [REPS]

Each binary runs live (`agent --format json`), interleaved, with export off
and with OTLP/HTTP export to a local receiver (200 OK to every POST). The
workload execs a `go` (a copy of /bin/true: a toolchain name, so every exec
gets a span) N times. CPU is the agent's own utime+stime from /proc (not
its children), per span = (CPU with export - CPU without) / spans exported.
"""
import http.server, os, shutil, signal, socketserver, subprocess, sys, tempfile, threading, time, json

old, new = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
REPS = int(sys.argv[4]) if len(sys.argv) > 4 else 3
TICK = os.sysconf("SC_CLK_TCK")

received = {"posts": 0, "bytes": 0}

class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        received["posts"] += 1
        received["bytes"] += n
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass

class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

srv = S(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
port = srv.server_address[1]

d = tempfile.mkdtemp()
shutil.copy("/bin/true", os.path.join(d, "go"))
work = f"for i in $(seq {N}); do {d}/go; done"

def cpu_ns(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1e9 / TICK

def status_kib(pid, key):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith(key):
            return int(l.split()[1])

def run(binary, export):
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root"}
    if export:
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                   OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    out = os.path.join(d, "records.jsonl")
    a = subprocess.Popen([binary, "--format", "json", "--output", out], env=env,
                         stderr=subprocess.PIPE, text=True)
    for line in a.stderr:
        if "agent: watching" in line:
            break
    threading.Thread(target=lambda: a.stderr.read(), daemon=True).start()
    time.sleep(1.0)
    steady = status_kib(a.pid, "VmRSS:")
    c0 = cpu_ns(a.pid)
    subprocess.run(["/bin/sh", "-c", work], check=True)
    time.sleep(3.0)  # the last batch out
    c1 = cpu_ns(a.pid)
    hwm, rss = status_kib(a.pid, "VmHWM:"), status_kib(a.pid, "VmRSS:")
    a.send_signal(signal.SIGTERM)
    a.wait()
    stats = {}
    for l in open(out):
        if l.startswith('{"type":"stats"'):
            stats = json.loads(l)
    spans = stats.get("export", {}).get("spans_exported", 0)
    return dict(cpu_ms=(c1 - c0) / 1e6, spans=spans, hwm_kib=hwm, rss_kib=rss, start_rss_kib=steady)

res = {}
for r in range(REPS):
    for name, b in (("before", old), ("after", new)):
        for export in (False, True):
            x = run(b, export)
            res.setdefault((name, export), []).append(x)
            print(name, "export" if export else "no-export", x, flush=True)

def med(v):
    v = sorted(v); return v[len(v) // 2]

print(f"\n{N} execs of a toolchain-named binary, {REPS} reps, medians")
print("| binary | agent CPU, export off (ms) | export on (ms) | spans exported | CPU per exported span (µs) | peak RSS export on (MiB) | RSS after (MiB) |")
print("|---|---|---|---|---|---|---|")
for name in ("before", "after"):
    off, on = res[(name, False)], res[(name, True)]
    c_off, c_on = med([x["cpu_ms"] for x in off]), med([x["cpu_ms"] for x in on])
    spans = med([x["spans"] for x in on])
    per = (c_on - c_off) * 1e3 / spans if spans else float("nan")
    print(f"| {name} | {c_off:.0f} | {c_on:.0f} | {spans} | {per:.1f} | {med([x['hwm_kib'] for x in on]) / 1024:.1f} | {med([x['rss_kib'] for x in on]) / 1024:.1f} |")
