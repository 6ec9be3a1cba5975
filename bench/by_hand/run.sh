#!/bin/bash
# The issue's "by hand" check: a `none` host beside a `bridge` host filled to Table 1's worst
# case (8,192 entries / 128 LNIDs / 126 idle ports), sockperf and iperf3 run with
# `ip netns exec` inside the testbed's VM namespaces, configurations alternating every round
# (order flipped), /dev/cpu_dma_latency held at 0. Prints one line per sample, then the
# medians and the median paired ratio bridge/none. A benchmark: it asserts nothing.
#
#   sudo bench/by_hand/run.sh                 # ROUNDS=9 SECONDS_PER=3 by default
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-9}; T=${SECONDS_PER:-3}; PREFIX=${PREFIX:-hvhand$$}
OUT=$(mktemp -d /tmp/hostvlan-by-hand.XXXXXX)
cleanup() {
  [[ -n ${QOS:-} ]] && kill "$QOS" 2>/dev/null || true
  .venv/bin/hostvlan testbed down --prefix "$PREFIX" >/dev/null 2>&1 || true
  rm -rf "$OUT"
}
trap cleanup EXIT
.venv/bin/hostvlan testbed up --json --prefix "$PREFIX" bench/by_hand/topology.yaml > "$OUT/tb.json"
ip_of() { python3 -c "import json,sys; print(json.load(open('$OUT/tb.json'))['vms']['$1']['ip'])"; }
declare -A SRV=([p]=$(ip_of p2) [f]=$(ip_of f2))
python3 -c 'import os,signal,struct; fd=os.open("/dev/cpu_dma_latency",os.O_WRONLY); os.write(fd,struct.pack("i",0)); signal.pause()' &
QOS=$!
for r in $(seq "$ROUNDS"); do
  if ((r % 2)); then order="p f"; else order="f p"; fi
  for h in $order; do
    ip=${SRV[$h]}
    ip netns exec "$PREFIX-v-${h}2" sockperf server -i "$ip" -p 11111 >/dev/null 2>&1 & s=$!
    sleep 0.3
    lat=$(ip netns exec "$PREFIX-v-${h}1" sockperf ping-pong -i "$ip" -p 11111 -t "$T" -m 64 2>&1 |
      sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p')
    kill $s; wait $s 2>/dev/null || true
    ip netns exec "$PREFIX-v-${h}2" iperf3 -s -B "$ip" -p 5201 >/dev/null 2>&1 & s=$!
    sleep 0.3
    udp=$(ip netns exec "$PREFIX-v-${h}1" iperf3 -c "$ip" -p 5201 -u -b 0 -l 1470 -t "$T" -J 2>/dev/null |
      python3 -c "import json,sys; e=json.load(sys.stdin)['end']['sum']; print(round(e['bits_per_second']*(1-e.get('lost_percent',0)/100)/1e9,4))")
    tcp=$(ip netns exec "$PREFIX-v-${h}1" iperf3 -c "$ip" -p 5201 -t "$T" -J |
      python3 -c "import json,sys; print(round(json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e9,4))")
    kill $s; wait $s 2>/dev/null || true
    echo "round=$r host=$h lat_us=$lat udp_gbps=$udp tcp_gbps=$tcp" | tee -a "$OUT/samples.txt"
  done
done
python3 - "$OUT/samples.txt" <<'PY'
import re, statistics, sys
by = {}
for line in open(sys.argv[1]):
    row = dict(re.findall(r"(\w+)=([\w.]+)", line))
    by.setdefault(row["round"], {})[row["host"]] = row
for k in ("lat_us", "udp_gbps", "tcp_gbps"):
    p = [float(v["p"][k]) for v in by.values() if "p" in v and "f" in v]
    f = [float(v["f"][k]) for v in by.values() if "p" in v and "f" in v]
    r = statistics.median(b / a for a, b in zip(p, f))
    print(f"{k}: none {statistics.median(p):.3f} ({min(p):.3f}-{max(p):.3f}), bridge {statistics.median(f):.3f}"
          f" ({min(f):.3f}-{max(f):.3f}), paired ratio bridge/none median {r:.4f}, n={len(p)}")
PY
