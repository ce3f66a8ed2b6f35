#!/usr/bin/env python3
"""Crash safety of ingestion: producers keep renaming pickup files in while
the ingesting process is killed with SIGKILL at random points, restarted,
and killed again. At the end every injected message must be queued exactly
once (none lost, none doubled), nothing in bad/, nothing left in pickup/.
With the driver flag --exchange (Pickup_Claim = exchange) the temporary
files are written beside pickup/, and the claimed directory must end
empty too.
usage: crash_test.py SPOOL_DRIVER [ROUNDS] [PER_ROUND] [DRIVER_FLAG...]"""
import os, random, re, shutil, signal, subprocess, sys, tempfile, time

driver = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
per_round = int(sys.argv[3]) if len(sys.argv) > 3 else 400
flags = sys.argv[4:]
seed = int(os.environ.get("CRASH_SEED", time.time()))
random.seed(seed)
print(f"seed {seed}, {rounds} rounds x {per_round} messages")

base = tempfile.mkdtemp(prefix="impetus-crash-")
pickup = os.path.join(base, "pickup")
os.makedirs(pickup)
stage = pickup
if "--exchange" in flags:
    stage = os.path.join(base, "stage")
    os.makedirs(stage)
total = 0


def produce(n):
    global total
    for _ in range(n):
        i = total
        total += 1
        tmp = os.path.join(stage, f".p{i}.tmp")
        with open(tmp, "w") as f:
            f.write(f"x-sender: <s@example.com>\nx-receiver: <r{i}@example.com>\n"
                    f"Message-ID: <tok-{i}@crash.test>\nSubject: {i}\n\n" + "x" * 900 + "\n")
        os.rename(tmp, os.path.join(pickup, f"m{i}"))


try:
    kills = 0
    for r in range(rounds):
        produce(per_round // 2)
        p = subprocess.Popen([driver, base] + flags, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Keep producing while it ingests, then kill it at a random point.
        produce(per_round - per_round // 2)
        time.sleep(random.uniform(0.0, 0.25))
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
    # Final run: recover and drain everything.
    out = subprocess.run([driver, base, "--idle-exit", "800"] + flags, capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        sys.exit(f"final run failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    if "BAD" in out.stdout or "ERR" in out.stdout:
        sys.exit("unexpected BAD/ERR lines:\n" + "\n".join(
            l for l in out.stdout.splitlines() if l.startswith(("BAD", "ERR")))[:3000])
    claimed = os.path.join(base, "claim", "pickup")
    left = os.listdir(pickup) + (os.listdir(claimed) if os.path.isdir(claimed) else [])
    if left:
        sys.exit(f"{len(left)} files left in pickup/: {left[:5]}")
    bad = os.listdir(os.path.join(base, "bad"))
    if bad:
        sys.exit(f"bad/ is not empty: {bad[:5]}")
    # Every queued message, read back through the spool: each token once.
    out = subprocess.run([driver, base, "--recover-only", "--tokens"] + flags,
                         capture_output=True, text=True, timeout=120)
    seen = {}
    for tok in re.findall(r"^MSG \S+ \d+ tok=(-?\d+)(?: end=\d)?$", out.stdout, re.M):
        seen[int(tok)] = seen.get(int(tok), 0) + 1
    lost = [i for i in range(total) if i not in seen]
    doubled = [i for i, c in seen.items() if c > 1]
    if lost or doubled:
        sys.exit(f"lost {len(lost)} {lost[:10]}, doubled {len(doubled)} {doubled[:10]}")
    # A recovery-only pass sees exactly the same set.
    out = subprocess.run([driver, base, "--recover-only"] + flags, capture_output=True, text=True,
                         timeout=120)
    if f"RECOVERED {total}" not in out.stdout:
        sys.exit(f"recovery found {out.stdout.splitlines()[:1]}, expected {total}")
    print(f"ok: {total} messages, {kills} SIGKILLs, each queued exactly once")
finally:
    shutil.rmtree(base, ignore_errors=True)
