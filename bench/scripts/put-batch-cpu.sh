#!/usr/bin/env bash
# Server CPU per job under put-batch: starts SPINDLED (default
# target/release/spindled) durable (-b, default -f 50) on a private socket,
# sends BATCHES put-batch commands of 1000 16-byte jobs (4 in flight) from
# Python, and prints jobs/s and the daemon's CPU per job from its own
# `stats` rusage (user and system, all its threads). The daemon's CPU per
# job moves less between runs than the rate does on a shared machine.
#
#   bench/scripts/put-batch-cpu.sh [SPINDLED] [BATCHES]   # default 1000
set -euo pipefail
BIN=${1:-target/release/spindled}
N=${2:-1000}
DIR=$(mktemp -d)
trap 'kill "$P" 2>/dev/null; wait "$P" 2>/dev/null; rm -rf "$DIR"' EXIT
"$BIN" --socket "$DIR/s.sock" -b "$DIR/data" --max-jobs 100000000 --max-bytes 100000000000 &
P=$!
for _ in $(seq 500); do [ -S "$DIR/s.sock" ] && break; sleep 0.01; done
python3 - "$DIR/s.sock" "$N" <<'PY'
import socket, sys, threading, time
path, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX); s.connect(path)
f = s.makefile("rb")
batch = b"put-batch 1024 0 60 1000\r\n" + b"16\r\nspindle-bench-16\r\n" * 1000
def rusage():
    s.sendall(b"stats\r\n")
    size = int(f.readline().split()[1])
    body = f.read(size + 2).decode()
    return {k: float(v) for k, v in (l.split(": ") for l in body.splitlines() if l.startswith("rusage"))}
a = rusage()
slots = threading.Semaphore(4)
def replies():
    for _ in range(n):
        line = f.readline()
        assert line.startswith(b"INSERTED-BATCH"), line
        slots.release()
t = threading.Thread(target=replies); t.start(); t0 = time.time()
for _ in range(n):
    slots.acquire(); s.sendall(batch)
t.join(); secs = time.time() - t0
b = rusage()
user = (b["rusage-utime"] - a["rusage-utime"]) * 1e6 / (n * 1000)
system = (b["rusage-stime"] - a["rusage-stime"]) * 1e6 / (n * 1000)
print(f"{n * 1000} jobs, {n * 1000 / secs:.0f} jobs/s; daemon CPU per job "
      f"{user + system:.2f} us (user {user:.2f}, system {system:.2f})")
PY
