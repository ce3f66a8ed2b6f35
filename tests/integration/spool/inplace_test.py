#!/usr/bin/env python3
"""A file written in place in pickup/ is never taken while still open for
writing (issue 18 item 3): N times (default 1,000), a producer opens
pickup/ipN, writes the first half, makes the spool look (another
producer renames a complete file in), pauses 0-5 ms, writes the rest
(ending in END) and closes. Every in-place message must come out of the
spool whole: zero truncated deliveries, zero losses.
usage: inplace_test.py SPOOL_DRIVER [N]"""
import os, random, sys, time
from driverlib import Driver

drv = Driver(sys.argv[1], "impetus-inplace-")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
pickup, drain = drv.pickup, drv.drain
try:
    rnd = random.Random(3)
    for i in range(n):
        head = ("x-sender: <s@example.com>\nx-receiver: <r@example.com>\n"
                "Message-ID: <tok-%d@example.com>\nSubject: in place %d\n\n" % (2 * i, i))
        with open(os.path.join(pickup, "ip%d" % i), "w") as f:
            f.write(head + "first half\n" * 20)
            f.flush()
            # another producer's complete file wakes the spool meanwhile
            other = os.path.join(pickup, ".o.tmp")
            with open(other, "w") as o:
                o.write("x-sender: <s@example.com>\nx-receiver: <r@example.com>\n"
                        "Message-ID: <tok-%d@example.com>\nSubject: other\n\nEND\n" % (2 * i + 1))
            os.rename(other, os.path.join(pickup, "other%d" % i))
            time.sleep(rnd.uniform(0, 0.005))
            drain(0)
            f.write("second half\n" * 20 + "END\n")
        drain(0)
    want = {2 * i for i in range(n)}
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
    print("in-place files delivered whole: %d of %d, truncated: %d, lost: %d; bad: %s"
          % (len(want & whole), n, len(cut_in), len(lost), bad[:3]))
    if cut_in or lost or bad:
        print("FAIL: truncated %s lost %s" % (cut_in[:10], lost[:10]))
        sys.exit(1)
    print("ok: zero truncated deliveries in %d runs" % n)
finally:
    drv.close()
