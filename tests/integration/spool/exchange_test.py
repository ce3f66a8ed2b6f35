#!/usr/bin/env python3
"""Pickup_Claim = exchange (issue 25): the spool claims everything in
pickup/ with one renameat2(RENAME_EXCHANGE) of pickup/ and
<Spoolbase>/claim/pickup. One scenario per run:

  oldfd  a producer holds a directory fd of pickup/ from before the claims
         and renames N files in through it (they land in whichever inode
         that fd names, claimed or not): every one is taken once, and both
         directories end empty.
  held   a writer holds pickup/held open, half written, across the claims
         while N other files are renamed in: all N are delivered while it
         is still open (nothing waits for it), and it is taken whole, once,
         after it is closed.
  mode   pickup/ is 1730 with another owner and group (root only, else
         SKIP): after the claims both directories still have exactly that
         owner, group and mode, so producers keep writing.
  die    the driver SIGKILLs itself right after its Nth exchange (a test
         hook), for N = 1..ROUNDS, with files arriving meanwhile; the final
         run takes the rest: every file queued exactly once, none lost.
usage: exchange_test.py SPOOL_DRIVER SCENARIO [N]"""
import os, re, subprocess, sys, time
from driverlib import Driver

driver, scenario = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000


def body(tok, end=True):
    return ("x-sender: <s@example.com>\nx-receiver: <r@example.com>\n"
            "Message-ID: <tok-%d@example.com>\nSubject: %d\n\n" % (tok, tok)
            + "line\n" * 10 + ("END\n" if end else ""))


def put(stage, dst, tok, dir_fd=None):
    tmp = os.path.join(stage, ".t%d.tmp" % tok)
    with open(tmp, "w") as f:
        f.write(body(tok))
    os.rename(tmp, dst, dst_dir_fd=dir_fd)


def wait_for(drv, want, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not want <= set(drv.msgs):
        drv.drain(0.2)


def listing(drv):
    out = []
    for d in (drv.pickup, drv.claimed):
        out += [os.path.join(d, f) for f in os.listdir(d)] if os.path.isdir(d) else []
    return out


def check(drv, want, fails):
    lost = sorted(want - set(drv.msgs))
    dup = sorted(t for t, ends in drv.msgs.items() if len(ends) > 1)
    cut = sorted(t for t, ends in drv.msgs.items() if not all(ends))
    if lost:
        fails.append("%d lost (tokens %s...)" % (len(lost), lost[:10]))
    if dup:
        fails.append("%d taken twice (tokens %s...)" % (len(dup), dup[:10]))
    if cut:
        fails.append("%d taken truncated (tokens %s...)" % (len(cut), cut[:10]))
    if drv.bad:
        fails.append("BAD lines: %s" % drv.bad[:5])


def finish(fails, what):
    if fails:
        print("FAIL: " + "; ".join(fails))
        sys.exit(1)
    print("ok: " + what)


if scenario == "oldfd":
    drv = Driver(driver, "impetus-xoldfd-", exchange=True)
    try:
        dfd = os.open(drv.pickup, os.O_RDONLY | os.O_DIRECTORY)
        ino0 = os.fstat(dfd).st_ino
        moved_away = 0  # files renamed in while that fd no longer named pickup/
        for i in range(n):
            # a file through the path now and then: claims keep happening
            put(drv.stage, os.path.join(drv.pickup, "p%d" % i), 2 * i + 1)
            if os.stat(drv.pickup).st_ino != ino0:
                moved_away += 1
            put(drv.stage, "old%d" % i, 2 * i, dir_fd=dfd)
            drv.drain(0)
        os.close(dfd)
        want = set(range(2 * n))
        wait_for(drv, want)
        # every file taken is removed after its commit: wait (bounded) for
        # both directories to empty, reading what the driver prints meanwhile
        end = time.monotonic() + 30
        while time.monotonic() < end and [f for f in listing(drv)
                                          if not os.path.basename(f).startswith(".")]:
            drv.drain(0.05)
        drv.drain(0.2)
        fails = []
        check(drv, want, fails)
        left = [f for f in listing(drv) if not os.path.basename(f).startswith(".")]
        if left:
            fails.append("left: %s" % left[:10])
        if moved_away == 0:
            fails.append("the old fd never named the claimed directory: the test did not test")
        print("through the old directory fd: %d files, %d of them while it was the claimed "
              "directory; %d taken in all" % (n, moved_away, len(set(drv.msgs) & want)))
        finish(fails, "every file renamed in through an old directory fd taken once")
    finally:
        drv.close()

elif scenario == "held":
    drv = Driver(driver, "impetus-xheld-", exchange=True)
    try:
        held = 0  # token 0: the held file; 1..n: the others
        f = open(os.path.join(drv.pickup, "held"), "w")
        f.write(body(held, end=False))
        f.flush()
        for i in range(1, n + 1):
            put(drv.stage, os.path.join(drv.pickup, "o%d" % i), i)
            drv.drain(0)
        others = set(range(1, n + 1))
        wait_for(drv, others)
        fails = []
        got_while_open = len(others & set(drv.msgs))
        if got_while_open != n:
            fails.append("only %d of %d other files delivered while one file was held open"
                         % (got_while_open, n))
        if held in drv.msgs:
            fails.append("the held file was taken while open for writing")
        f.write("second half\nEND\n")
        f.close()
        wait_for(drv, others | {held}, 30)
        check(drv, others | {held}, fails)
        left = [p for p in listing(drv) if not os.path.basename(p).startswith(".")]
        if left:
            fails.append("left: %s" % left[:10])
        print("%d other files delivered while the held file was open; held file: %s"
              % (got_while_open, drv.msgs.get(held)))
        finish(fails, "a file held open across the claims holds nothing up and is taken whole")
    finally:
        drv.close()

elif scenario == "mode":
    if os.geteuid() != 0:
        print("SKIP: not root (cannot give pickup/ another owner)")
        sys.exit(77)
    want_mode, want_uid, want_gid = 0o1730, 65534, 65533

    def setup(drv):
        os.chown(drv.pickup, want_uid, want_gid)
        os.chmod(drv.pickup, want_mode)

    drv = Driver(driver, "impetus-xmode-", exchange=True, setup=setup)
    try:
        fails = []
        seen = set()
        for rnd in range(20):  # 20 rounds: each claim swaps the two inodes
            for i in range(10):
                tok = rnd * 10 + i
                put(drv.stage, os.path.join(drv.pickup, "m%d" % tok), tok)
            wait_for(drv, set(range(rnd * 10 + 10)), 30)
            for d in (drv.pickup, drv.claimed):
                st = os.stat(d)
                got = (st.st_mode & 0o7777, st.st_uid, st.st_gid)
                seen.add(st.st_ino)
                if got != (want_mode, want_uid, want_gid):
                    fails.append("%s is %o %d:%d, not %o %d:%d" % (
                        d, got[0], got[1], got[2], want_mode, want_uid, want_gid))
        check(drv, set(range(200)), fails)
        if len(seen) < 2:
            fails.append("no exchange was seen")
        finish(fails[:5], "both directories kept pickup/'s owner, group and mode (1730 "
                          "65534:65533) across the claims")
    finally:
        drv.close()

elif scenario == "die":
    drv = Driver(driver, "impetus-xdie-", exchange=True)
    drv.proc.terminate()
    drv.proc.wait()
    drv.proc = None
    try:
        tok = 0
        kills = 0
        for k in range(1, n + 1):
            for _ in range(50):
                put(drv.stage, os.path.join(drv.pickup, "m%d" % tok), tok)
                tok += 1
            p = subprocess.Popen([driver, drv.base, "--exchange", "--tokens",
                                  "--die-after-swap", str(k)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            for _ in range(50):  # more files while it claims
                put(drv.stage, os.path.join(drv.pickup, "m%d" % tok), tok)
                tok += 1
            out, err = p.communicate(timeout=60)
            if p.returncode != -9:
                sys.exit("FAIL: the driver did not die after exchange %d (status %d): %s"
                         % (k, p.returncode, err.decode()[-500:]))
            kills += 1
        out = subprocess.run([driver, drv.base, "--exchange", "--tokens", "--idle-exit", "800"],
                             capture_output=True, timeout=120)
        for line in out.stdout.split(b"\n"):
            m = re.search(rb"^MSG \S+ \d+ tok=(\d+) end=(\d)", line)
            if m:
                drv.msgs.setdefault(int(m.group(1)), []).append(m.group(2) == b"1")
            elif line.startswith(b"BAD"):
                drv.bad.append(line.decode(errors="replace"))
        # what recovery hands over again is the journal's copy: count the
        # queue itself once more from a clean recovery
        out = subprocess.run([driver, drv.base, "--exchange", "--tokens", "--recover-only"],
                             capture_output=True, timeout=120)
        queued = {}
        for line in out.stdout.split(b"\n"):
            m = re.search(rb"^MSG \S+ \d+ tok=(\d+) end=(\d)", line)
            if m:
                queued[int(m.group(1))] = queued.get(int(m.group(1)), 0) + 1
        fails = []
        want = set(range(tok))
        lost = sorted(want - set(queued))
        dup = sorted(t for t, c in queued.items() if c > 1)
        if lost:
            fails.append("%d lost (tokens %s...)" % (len(lost), lost[:10]))
        if dup:
            fails.append("%d queued twice (tokens %s...)" % (len(dup), dup[:10]))
        if drv.bad:
            fails.append("BAD lines: %s" % drv.bad[:5])
        left = [p for p in listing(drv) if not os.path.basename(p).startswith(".")]
        if left:
            fails.append("left: %s" % left[:10])
        print("%d files, %d kills right after an exchange: %d queued, %d lost, %d twice"
              % (tok, kills, len(queued), len(lost), len(dup)))
        finish(fails, "a kill right after the exchange loses and duplicates nothing")
    finally:
        drv.close()
else:
    sys.exit("unknown scenario " + scenario)
