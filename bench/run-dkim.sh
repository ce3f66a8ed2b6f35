#!/usr/bin/env bash
# run-dkim.sh [BUILD_DIR]: the DKIM signing figures of bench/BENCHMARKS.md
# (issue 22), in one run so they compare:
#   bench/dkim_micro.txt   bench_dkim: sign of 1 KB vs the key operation alone
#   bench/dkim.jsonl       impetus-bench, 1 KB, 2 workers, durable, to the sink:
#                          no DKIM / RSA-2048 / Ed25519, REPEAT rounds
#   bench/dkim_speed.txt   openssl speed, alternating with those runs: before
#                          and after every engine run, (a) `-elapsed -multi
#                          CORES` (signatures per second the machine gives a
#                          process group right now: the rate's reference) and
#                          (b) plain `openssl speed` (CPU time of one signature:
#                          the reference of the engine's added CPU)
#   bench/dkim_summary.txt the ratios of every round, their medians, the load
#   bench/dkim_compare.txt bench/postfix/compare_dkim.sh (Postfix + OpenDKIM)
# bench/render.py puts these in BENCHMARKS.md after bench/dkim_notes.md: edit
# the notes by hand after a run (the load, every round, what it shows).
# env COUNT=20000 REPEAT=3 PF_N=2000 CORES=$(nproc) COMPARE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
COUNT=${COUNT:-20000}
REPEAT=${REPEAT:-3}
CORES=${CORES:-$(nproc)}
"$BUILD/bench/bench_dkim" --benchmark_repetitions=5 --benchmark_min_time=0.5 \
  --benchmark_report_aggregates_only=true 2>/dev/null | grep -E "median" >bench/dkim_micro.txt

# one line per measurement: "<round> <what> <alg> <sign/s>"
speed() { # alg (rsa|ed25519), for round $ROUND
  local alg=$1 name
  name=$([ "$alg" = rsa ] && echo rsa2048 || echo ed25519)
  local m c
  m=$(openssl speed -elapsed -multi "$CORES" -seconds 2 "$name" 2>/dev/null |
    awk '/^rsa 2048 bits/ {print $6} /Ed25519\)/ {print $7}' | tail -1)
  c=$(openssl speed -seconds 1 "$name" 2>/dev/null |
    awk '/^rsa 2048 bits/ {print $6} /Ed25519\)/ {print $7}' | tail -1)
  echo "$ROUND multi $alg $m"
  echo "$ROUND cpu $alg $c"
}
: >bench/dkim.jsonl
: >bench/dkim_speed.txt
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >bench/dkim_load.txt
for ROUND in $(seq "$REPEAT"); do
  for v in none rsa ed25519; do
    [ "$v" != none ] && speed "$v" >>bench/dkim_speed.txt
    extra=(); [ "$v" != none ] && extra=(--dkim "$v")
    bench/impetus-bench --build "$BUILD" --count "$COUNT" --workers 2 --fsync-run 0 \
      --no-latency --quiet "${extra[@]}" --label "dkim-$v-r$ROUND" --json bench/dkim.jsonl >/dev/null
    [ "$v" != none ] && speed "$v" >>bench/dkim_speed.txt
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>bench/dkim_load.txt
python3 - "$CORES" "$COUNT" >bench/dkim_summary.txt <<'PY'
import json, statistics, sys
cores, count = int(sys.argv[1]), int(sys.argv[2])
runs = {}
for l in open("bench/dkim.jsonl"):
    r = json.loads(l)
    v, rnd = r["label"].split("-")[1], int(r["label"].rsplit("-r", 1)[1])
    runs[(v, rnd)] = r
sp = {}
for l in open("bench/dkim_speed.txt"):
    rnd, what, alg, val = l.split()
    sp.setdefault((int(rnd), what, alg), []).append(float(val))
print("".join(open("bench/dkim_load.txt")).strip())
print("%d messages of 1 KB per run, 2 workers, durable, to impetus-sink; %d cores" % (count, cores))
med = {}
for alg, key in (("rsa", "rsa"), ("ed25519", "ed25519")):
    for rnd in sorted({k[1] for k in runs}):
        s, n = runs.get((alg, rnd)), runs.get(("none", rnd))
        if not s or not n:
            continue
        multi = statistics.mean(sp[(rnd, "multi", key)])  # before and after
        cpu1 = 1e6 / statistics.mean(sp[(rnd, "cpu", key)])  # us of CPU per signature
        added = s["cpu_us_per_msg"] - n["cpu_us_per_msg"]
        row = {"rate": s["msgs_per_s"], "unsigned": n["msgs_per_s"], "multi": multi,
               "rate_vs_multi": s["msgs_per_s"] / multi, "added_us": added,
               "sign_us": cpu1, "added_vs_sign": added / cpu1,
               "idle_ref": cores * 1e6 / cpu1}
        med.setdefault(alg, []).append(row)
        print("round %d %-7s: %7.1f msg/s signed (%7.1f unsigned); openssl -elapsed -multi %d "
              "around it %7.1f sign/s -> %.2fx; engine CPU added %.1f us/msg vs one openssl "
              "signature %.1f us -> %.2fx" % (rnd, alg, row["rate"], row["unsigned"], cores, multi,
                                               row["rate_vs_multi"], added, cpu1,
                                               row["added_vs_sign"]))
for alg, rows in med.items():
    m = lambda k: statistics.median(r[k] for r in rows)
    print("MEDIAN %-7s: %.1f msg/s; rate / (openssl -elapsed -multi %d, same moment) = %.2fx "
          "(target >= 0.8 for rsa); cores x openssl CPU-time sign/s = %.0f; engine CPU added "
          "%.1f us/msg = %.2fx one openssl signature (target <= 1.1x)"
          % (alg, m("rate"), cores, m("rate_vs_multi"), m("idle_ref"), m("added_us"),
             m("added_vs_sign")))
PY
cat bench/dkim_summary.txt
if [ "${COMPARE:-1}" = 1 ]; then
  N=${PF_N:-2000} bash bench/postfix/compare_dkim.sh "$BUILD" 2>/dev/null | tail -3 >bench/dkim_compare.txt || true
  cat bench/dkim_compare.txt
fi
echo "run-dkim: wrote bench/dkim_micro.txt dkim_speed.txt dkim.jsonl dkim_summary.txt dkim_compare.txt" >&2
