#!/usr/bin/env python3
"""Full disk: on a 2 MB tmpfs, ingestion must stop with a clear error, leave
every pickup file in place and unchanged, leave nothing half-written in the
queue, and resume by itself once space returns. Needs root (mount); exits
77 (skip) when tmpfs cannot be mounted.
usage: full_disk_test.py SPOOL_DRIVER [BODY_BYTES]
(BODY_BYTES, default 1000: 20000 makes bodies the spool writes from where
it read them, with one pwritev per batch, instead of copying them)"""
import errno, hashlib, os, select, shutil, signal, subprocess, sys, tempfile, time

driver = sys.argv[1]
body = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
top = tempfile.mkdtemp(prefix="impetus-full-")
mnt = os.path.join(top, "mnt")
os.makedirs(mnt)
r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt],
                   capture_output=True, text=True)
if r.returncode != 0:
    shutil.rmtree(top, ignore_errors=True)
    print(f"SKIP: cannot mount tmpfs ({r.stderr.strip()})")
    sys.exit(77)

proc = None
try:
    base = os.path.join(mnt, "spool")
    # Let the driver create the layout, then stop it.
    subprocess.run([driver, base, "--recover-only"], check=True, capture_output=True)
    pickup = os.path.join(base, "pickup")
    digests = {}
    for i in range(20):
        data = (f"x-sender: <s@example.com>\nx-receiver: <r{i}@example.com>\n"
                f"Subject: {i}\n\n" + (("y" * 99 + "\n") * 10 if body == 1000 else ("y" * 76 + "\n") * (body // 77))
                + "\n").encode()
        name = f"m{i:02d}"
        with open(os.path.join(pickup, name), "wb") as f:
            f.write(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    # Fill the file system.
    filler = os.path.join(mnt, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    os.close(fd)
    if body != 1000:
        # Leave room for a segment and part of the batch: the batch's
        # pwritev is cut short, then fails, and is cut back.
        os.truncate(filler, os.path.getsize(filler) - 160 * 1024)
    fillers = []
    proc = subprocess.Popen([driver, base, "--thread"], stdout=subprocess.PIPE)
    lines = []
    partial = b""

    def read_until(pred, secs):
        # Raw reads: a buffered readline() would hide lines from select().
        global partial
        deadline = time.time() + secs
        while time.time() < deadline:
            if pred(lines):
                return True
            rl, _, _ = select.select([proc.stdout], [], [], 0.2)
            if rl:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                partial += chunk
                *done, partial = partial.split(b"\n")
                lines.extend(l.decode() for l in done)
        return pred(lines)

    if not read_until(lambda ls: any("disk full" in l for l in ls), 10):
        sys.exit("no disk-full error reported; output:\n" + "\n".join(lines))
    print("reported:", [l for l in lines if "disk full" in l][0])
    if any(l.startswith("MSG") for l in lines):
        # Some may have fitted before the disk filled; that is allowed, but
        # then they must be complete. The check below covers it.
        pass
    # Pickup files untouched (those not ingested), no half-written metadata.
    # A message committed as the disk filled may print its MSG line after
    # its pickup file went: poll until every file is accounted for (checked below).
    read_until(lambda ls: len(os.listdir(pickup)) + sum(1 for l in ls if l.startswith("MSG")) == 20, 10)
    ingested = sum(1 for l in lines if l.startswith("MSG"))
    for name in os.listdir(pickup):
        with open(os.path.join(pickup, name), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digests[name]:
                sys.exit(f"pickup/{name} changed")
    # New messages live in the journal; nothing per message in the buckets,
    # and no segment beyond its 8-byte header unless something fitted (a
    # failed append is cut back).
    qfiles = []
    for b in os.listdir(os.path.join(base, "queue")):
        if b != "journal":
            qfiles += [os.path.join(base, "queue", b, n) for n in os.listdir(os.path.join(base, "queue", b))]
    jdir = os.path.join(base, "queue", "journal")
    segs = [n for n in os.listdir(jdir) if os.path.getsize(os.path.join(jdir, n)) > 8]
    if qfiles or (ingested == 0 and segs):
        sys.exit(f"queue holds {qfiles} {segs} for {ingested} ingested messages")
    if len(os.listdir(pickup)) + ingested != 20:
        sys.exit("a pickup file was lost")
    if os.listdir(os.path.join(base, "bad")):
        sys.exit(f"bad/ is not empty: {os.listdir(os.path.join(base, 'bad'))}")
    # Space returns: ingestion resumes by itself.
    os.unlink(filler)
    for p in fillers:
        os.unlink(p)
    if not read_until(lambda ls: sum(1 for l in ls if l.startswith("MSG")) == 20, 15):
        sys.exit("ingestion did not resume; output:\n" + "\n".join(lines))
    # The commit thread prints MSG lines, the ingest thread the 'resumed'
    # line: either may come first.
    if not read_until(lambda ls: any("resumed" in l for l in ls), 10):
        sys.exit("no 'resumed' line")
    if os.listdir(pickup):
        sys.exit(f"pickup not empty after resume: {os.listdir(pickup)}")
    print(f"ok: stopped on disk full, lost nothing, resumed ({ingested} fitted before)")
finally:
    if proc:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    subprocess.run(["umount", mnt])
    shutil.rmtree(top, ignore_errors=True)
