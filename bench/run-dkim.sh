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
#   bench/dkim_runs.txt    the load average at the start of every engine run
#   bench/dkim_summary.txt the ratios of every round, their medians, the load
#   bench/dkim_compare.txt bench/postfix/compare_dkim.sh (Postfix + OpenDKIM)
#   bench/dkim_result.json all of it per round and the medians: bench/render.py
#                          makes BENCHMARKS.md's DKIM rows from it
# Rounds alternate the variants (no DKIM, RSA, Ed25519; with BASE=DIR also
# the engine built in DIR, e.g. main's, for an A/B in the same sitting) and
# reverse their order every other round; every figure is a median over the
# rounds. bench/dkim_notes.md (by hand, optional) is printed above the rows.
# env COUNT=20000 REPEAT=5 PF_N=2000 CORES=$(nproc) COMPARE=1 BASE= BASE_ALGS="rsa ed25519".
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
COUNT=${COUNT:-20000}
REPEAT=${REPEAT:-5}
CORES=${CORES:-$(nproc)}
"$BUILD/bench/bench_dkim" --benchmark_repetitions=5 --benchmark_min_time=0.5 \
  --benchmark_report_aggregates_only=true 2>/dev/null | grep -E "median" >bench/dkim_micro.txt

# one line per measurement: "<round> <what> <alg> <sign/s> <variant>"
speed() { # alg (rsa|ed25519), variant it is taken around, for round $ROUND
  local alg=$1 v=$2 name
  name=$([ "$alg" = rsa ] && echo rsa2048 || echo ed25519)
  local m c
  m=$(openssl speed -elapsed -multi "$CORES" -seconds 2 "$name" 2>/dev/null |
    awk '/^rsa 2048 bits/ {print $6} /Ed25519\)/ {print $7}' | tail -1)
  c=$(openssl speed -seconds 1 "$name" 2>/dev/null |
    awk '/^rsa 2048 bits/ {print $6} /Ed25519\)/ {print $7}' | tail -1)
  echo "$ROUND multi $alg ${m:-0} $v"
  echo "$ROUND cpu $alg ${c:-0} $v"
}
: >bench/dkim.jsonl
: >bench/dkim_speed.txt
: >bench/dkim_runs.txt
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >bench/dkim_load.txt
# Variants of a round; with BASE=DIR also rsa and ed25519 by the engine
# built in DIR (main's binary, say): an A/B in the same sitting.
VARIANTS=(none rsa ed25519)
if [ -n "${BASE:-}" ]; then
  VARIANTS=(none)
  for a in rsa ed25519; do
    VARIANTS+=("$a")
    [[ " ${BASE_ALGS:-rsa ed25519} " == *" $a "* ]] && VARIANTS+=("${a}base")
  done
fi
for ROUND in $(seq "$REPEAT"); do
  # ABBA: every other round runs the variants in reverse order, so a
  # machine that gets busier (or quieter) during the run does not favour
  # the variant that always comes first
  order=("${VARIANTS[@]}")
  if [ $((ROUND % 2)) = 0 ]; then
    order=(); for ((i = ${#VARIANTS[@]} - 1; i >= 0; i--)); do order+=("${VARIANTS[i]}"); done
  fi
  for v in "${order[@]}"; do
    alg=${v%base}; build=$BUILD; [ "$alg" != "$v" ] && build=$BASE
    [ "$alg" != none ] && speed "$alg" "$v" >>bench/dkim_speed.txt
    extra=(); [ "$alg" != none ] && extra=(--dkim "$alg")
    echo "$ROUND $v $(cut -d' ' -f1 /proc/loadavg)" >>bench/dkim_runs.txt
    bench/impetus-bench --build "$build" --count "$COUNT" --workers 2 --fsync-run 0 \
      --no-latency --quiet "${extra[@]}" --label "dkim-$v-r$ROUND" --json bench/dkim.jsonl >/dev/null
    [ "$alg" != none ] && speed "$alg" "$v" >>bench/dkim_speed.txt
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>bench/dkim_load.txt
if [ "${COMPARE:-1}" = 1 ]; then
  N=${PF_N:-2000} bash bench/postfix/compare_dkim.sh "$BUILD" 2>/dev/null | tail -3 >bench/dkim_compare.txt || true
fi
# The summary (text) and bench/dkim_result.json (what bench/render.py
# turns into BENCHMARKS.md's DKIM rows): per round, each signed run against
# the openssl figures taken right before and after it and against the
# no-DKIM run of the same round; medians over the rounds.
python3 - "$CORES" "$COUNT" "$REPEAT" "${PF_N:-2000}" "${BASE:-}" "${COMPARE:-1}" >bench/dkim_summary.txt <<'PY'
import json, re, statistics, sys, time
cores, count, repeat, pf_n, base = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
compare = sys.argv[6] == "1"
runs = {}
for l in open("bench/dkim.jsonl"):
    r = json.loads(l)
    v, rnd = r["label"].split("-")[1], int(r["label"].rsplit("-r", 1)[1])
    runs[(v, rnd)] = r
sp = {}
for l in open("bench/dkim_speed.txt"):
    rnd, what, alg, val, v = l.split()
    if float(val) > 0:
        sp.setdefault((int(rnd), what, v), []).append(float(val))
loads = {}
for l in open("bench/dkim_runs.txt"):
    rnd, v, ld = l.split()
    loads[(v, int(rnd))] = float(ld)
print("".join(open("bench/dkim_load.txt")).strip())
print("%d messages of 1 KB per run, 2 workers, durable, to impetus-sink; %d cores; %d rounds "
      "(order reversed every other round)" % (count, cores, repeat))
res = {"command": "COUNT=%d REPEAT=%d PF_N=%d %sbench/run-dkim.sh build"
                  % (count, repeat, pf_n, "BASE=<main's build> " if base else ""),
       "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": cores,
       "load": open("bench/dkim_load.txt").read().strip().replace("\n", "; "),
       "variants": {}}
for v in ("rsa", "rsabase", "ed25519", "ed25519base"):
    rows = []
    for rnd in sorted({k[1] for k in runs}):
        s, n = runs.get((v, rnd)), runs.get(("none", rnd))
        if not s or not n or (rnd, "multi", v) not in sp or (rnd, "cpu", v) not in sp:
            continue
        multi = statistics.mean(sp[(rnd, "multi", v)])  # right before and after the run
        cpu1 = 1e6 / statistics.mean(sp[(rnd, "cpu", v)])  # us of CPU per signature
        added = s["cpu_us_per_msg"] - n["cpu_us_per_msg"]
        rows.append({"round": rnd, "rate": s["msgs_per_s"], "unsigned": n["msgs_per_s"],
                     "multi": multi, "rate_vs_multi": s["msgs_per_s"] / multi,
                     "cpu_us": s["cpu_us_per_msg"], "added_us": added, "sign_us": cpu1,
                     "added_vs_sign": added / cpu1, "load": loads.get((v, rnd)),
                     "threads": s.get("threads_us_per_msg", {})})
        print("round %d %-11s: %7.1f msg/s signed (%7.1f unsigned); openssl -elapsed -multi %d "
              "around it %7.1f sign/s -> %.2fx; engine CPU added %.1f us/msg vs one openssl "
              "signature %.1f us -> %.2fx; load %s" % (rnd, v, rows[-1]["rate"], rows[-1]["unsigned"],
                                                   cores, multi, rows[-1]["rate_vs_multi"], added,
                                                   cpu1, rows[-1]["added_vs_sign"], loads.get((v, rnd))))
    if rows:
        res["variants"][v] = {"rounds": rows, "median": {
            k: statistics.median(r[k] for r in rows)
            for k in ("rate", "unsigned", "rate_vs_multi", "added_us", "sign_us", "added_vs_sign")}}
for v, d in res["variants"].items():
    m = d["median"]
    print("MEDIAN %-11s: %.1f msg/s; rate / (openssl -elapsed -multi %d, same moment) = %.2fx; "
          "engine CPU added %.1f us/msg = %.2fx one openssl signature"
          % (v, m["rate"], cores, m["rate_vs_multi"], m["added_us"], m["added_vs_sign"]))
try:
    if not compare:
        raise OSError("not run")
    text = open("bench/dkim_compare.txt").read()
    pf = re.search(r"RATIO impetus/postfix\+opendkim = ([\d.]+)x", text)
    res["postfix"] = {"ratio": float(pf.group(1)) if pf else None, "text": text.strip()}
except OSError:
    pass
json.dump(res, open("bench/dkim_result.json", "w"), indent=1)
PY
cat bench/dkim_summary.txt
[ "${COMPARE:-1}" = 1 ] && cat bench/dkim_compare.txt
echo "run-dkim: wrote bench/dkim_micro.txt dkim_speed.txt dkim_runs.txt dkim.jsonl dkim_summary.txt dkim_compare.txt dkim_result.json" >&2
