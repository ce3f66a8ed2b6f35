#!/usr/bin/env python3
"""A file written in place in pickup/ is never taken while still open for
writing (issue 18 item 3): N times (default 1,000), a producer opens
pickup/ipN, writes the first half, makes the spool look (another
producer renames a complete file in), pauses 0-5 ms, writes the rest
(ending in END) and closes. Every in-place message must come out of the
spool whole: zero truncated deliveries, zero losses.
With --touch-first the producer first creates the file empty and closes
it, pauses 0-5 ms, then opens it again to write: the instant inside
open(O_CREAT) where a new file exists, empty, before its writer counts
(a read lease can be had then) made as wide as the pause. An empty file
not renamed in must not be taken (nor sent to bad/) while it may still
be written.
With --exchange the spool claims by exchanging directories (Pickup_Claim =
exchange) and the other producer's temporary file is written beside
pickup/ (--touch-first does not apply: a producer that closes its file and
opens it again by path must use Pickup_Claim = rename).
usage: inplace_test.py SPOOL_DRIVER [N] [--touch-first] [--exchange]"""
import os, random, sys, time
from driverlib import Driver

drv = Driver(sys.argv[1], "impetus-inplace-", exchange="--exchange" in sys.argv)
args = [a for a in sys.argv[2:] if not a.startswith("--")]
n = int(args[0]) if args else 1000
touch_first = "--touch-first" in sys.argv
pickup, drain = drv.pickup, drv.drain
try:
    rnd = random.Random(3)
    taken_empty = []
    for i in range(n):
        head = ("x-sender: <s@example.com>\nx-receiver: <r@example.com>\n"
                "Message-ID: <tok-%d@example.com>\nSubject: in place %d\n\n" % (2 * i, i))
        if touch_first:
            open(os.path.join(pickup, "ip%d" % i), "w").close()
            drain(0)
            time.sleep(rnd.uniform(0, 0.005))
        try:
            f = open(os.path.join(pickup, "ip%d" % i), "r+" if touch_first else "w")
        except FileNotFoundError:  # taken while empty, before its writer opened it
            taken_empty.append(i)
            continue
        with f:
            f.write(head + "first half\n" * 20)
            f.flush()
            # another producer's complete file wakes the spool meanwhile
            other = os.path.join(drv.stage, ".o.tmp")
            with open(other, "w") as o:
                o.write("x-sender: <s@example.com>\nx-receiver: <r@example.com>\n"
                        "Message-ID: <tok-%d@example.com>\nSubject: other\n\nEND\n" % (2 * i + 1))
            os.rename(other, os.path.join(pickup, "other%d" % i))
            time.sleep(rnd.uniform(0, 0.005))
            drain(0)
            f.write("second half\n" * 20 + "END\n")
        drain(0)
    want = {2 * i for i in range(n) if i not in taken_empty}
    deadline = time.monotonic() + 120
    def whole():
        return {t for t, ends in drv.msgs.items() if all(ends)}

    def cut():
        return {t for t, ends in drv.msgs.items() if not all(ends)}

    while time.monotonic() < deadline and not want <= set(drv.msgs):
        drain(0.2)
    whole, cut, bad = whole(), cut(), drv.bad
    cut_in = sorted(t for t in cut if t % 2 == 0)
    lost = sorted(want - whole - cut)
    print("in-place files delivered whole: %d of %d, truncated: %d, lost: %d, taken while "
          "empty: %d; bad: %s" % (len(want & whole), n, len(cut_in), len(lost),
                                  len(taken_empty), bad[:3]))
    if cut_in or lost or bad or taken_empty:
        print("FAIL: truncated %s lost %s taken empty %s"
              % (cut_in[:10], lost[:10], taken_empty[:10]))
        sys.exit(1)
    print("ok: zero truncated deliveries in %d runs" % n)
finally:
    drv.close()
