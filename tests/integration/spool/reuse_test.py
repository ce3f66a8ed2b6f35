#!/usr/bin/env python3
"""A pickup name reused while the spool reads it (issue 18 item 2): the
exact experiment, N times (default 1,000): rename file A to pickup/repN,
wait 0-20 ms, rename file B onto the same name. The newer file B must
always be ingested (A may legitimately be replaced before it is read).
Zero losses: every B token comes out of the spool, and pickup/ ends empty.
With --bad-first every A is a file the spool rejects (no x-sender): it
goes to bad/, and the newer B must still be ingested, never sent to bad/
in A's place (the move to bad/ is tied to the file too).
With --exchange the spool claims by exchanging directories (Pickup_Claim =
exchange) and the temporary files are written beside pickup/.
usage: reuse_test.py SPOOL_DRIVER [N] [--bad-first] [--exchange]"""
import os, random, sys, time
from driverlib import Driver

drv = Driver(sys.argv[1], "impetus-reuse-", exchange="--exchange" in sys.argv)
args = [a for a in sys.argv[2:] if not a.startswith("--")]
n = int(args[0]) if args else 1000
bad_first = "--bad-first" in sys.argv
pickup, drain, stage = drv.pickup, drv.drain, drv.stage
try:
    def put(tmpname, tok, bad=False):
        with open(os.path.join(stage, tmpname), "w") as f:
            f.write("" if bad else "x-sender: <s@example.com>\n")
            f.write("x-receiver: <r@example.com>\n"
                    "Message-ID: <tok-%d@example.com>\nSubject: %d\n\nbody\n" % (tok, tok))

    rnd = random.Random(18)
    for i in range(n):
        a, b = 2 * i, 2 * i + 1
        put(".a.tmp", a, bad_first)
        put(".b.tmp", b)
        name = os.path.join(pickup, "rep%d" % (i % 50))
        # The previous B under this name must have been taken before A
        # reuses the name: else the producer itself replaces it (seen at
        # load 25, when the spool fell more than 50 names behind), and
        # that would be counted as the spool's loss.
        prev_b = 2 * (i - 50) + 1
        wait_end = time.monotonic() + 60
        while i >= 50 and prev_b not in drv.msgs and time.monotonic() < wait_end:
            drain(0.05)
        os.rename(os.path.join(stage, ".a.tmp"), name)
        time.sleep(rnd.uniform(0, 0.020))
        os.rename(os.path.join(stage, ".b.tmp"), name)
        drain(0)
    deadline = time.monotonic() + 120
    want = {2 * i + 1 for i in range(n)}
    while time.monotonic() < deadline and not want <= set(drv.msgs):
        drain(0.2)
    seen, bad = set(drv.msgs), drv.bad
    lost = sorted(want - seen)
    left = os.listdir(pickup) + (os.listdir(drv.claimed) if os.path.isdir(drv.claimed) else [])
    a_in = len([t for t in seen if t % 2 == 0])
    print("B files ingested: %d of %d; A files ingested before B replaced them: %d; "
          "left in pickup/: %s; bad: %s" % (len(want & seen), n, a_in, left[:10], bad[:5]))
    fails = []
    badb = []  # B files found in bad/
    bdir = os.path.join(drv.base, "bad")
    for f in os.listdir(bdir) if os.path.isdir(bdir) else []:
        if f.endswith(".why"):
            continue
        with open(os.path.join(bdir, f), errors="replace") as fh:
            t = fh.read()
        if "Message-ID: <tok-" in t:
            tok = int(t.split("Message-ID: <tok-")[1].split("@")[0])
            if tok % 2 == 1:
                badb.append(tok)
    if badb:
        fails.append("%d newer files sent to bad/ (tokens %s...)" % (len(badb), sorted(badb)[:10]))
    if bad_first:
        bad = [b for b in bad if "no x-sender" not in b]  # A files are rejected by design
    if lost:
        fails.append("%d newer files lost (tokens %s...)" % (len(lost), lost[:10]))
    if bad:
        fails.append("BAD lines: %s" % bad[:5])
    if [f for f in left if not f.startswith(".")]:
        fails.append("files left in pickup/: %s" % left[:10])
    if fails:
        print("FAIL: " + "; ".join(fails))
        sys.exit(1)
    print("ok: zero losses in %d runs" % n)
finally:
    drv.close()
