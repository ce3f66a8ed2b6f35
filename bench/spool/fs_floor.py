#!/usr/bin/env python3
"""fs_floor.py DIR [N]: the kernel's price of the spool's per-message file
operations alone, with no engine. For each of N 1 KB pickup files it does
what the journal-based spool asks of the kernel (io_uring or not, the file
system work is the same): stat, open (O_NOATIME), read and close of the pickup file,
one append to a journal file per 512 messages followed by one fdatasync
(group commit), then the unlink of the pickup file. Prints the kernel (sys)
CPU per message for the reading side and for the unlinks: a floor under
impetus's engine CPU per message on this file system, whatever the engine
does in user space or on the network."""
import os
import sys
import time

d = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
pick = os.path.join(d, "pickup")
os.makedirs(pick, exist_ok=True)
body = b"x-sender: <a@b.test>\nx-receiver: <c@d.test>\n\n" + b"x" * 1000
for i in range(n):
    fd = os.open(os.path.join(pick, "m%d" % i), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, body)
    os.close(fd)
pfd = os.open(pick, os.O_RDONLY | os.O_DIRECTORY)
jfd = os.open(os.path.join(d, "journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
t0, w0 = os.times(), time.monotonic()
batch = []
for i in range(n):
    name = "m%d" % i
    os.stat(name, dir_fd=pfd, follow_symlinks=False)
    fd = os.open(name, os.O_RDONLY | os.O_NOATIME, dir_fd=pfd)  # as the engine
    batch.append(os.read(fd, 65536))
    os.close(fd)
    if len(batch) == 512 or i == n - 1:
        os.write(jfd, b"".join(batch))
        os.fdatasync(jfd)
        batch = []
t1 = os.times()
for i in range(n):
    os.unlink("m%d" % i, dir_fd=pfd)
t2, w2 = os.times(), time.monotonic()
print("fs_floor n=%d: read side sys %.1f us/msg (stat, open, read, close; journal append + "
      "fdatasync per 512), unlink sys %.1f us/msg, total sys %.1f us/msg (python user %.1f us/msg; "
      "wall %.2f s)" % (
          n, (t1.system - t0.system) / n * 1e6, (t2.system - t1.system) / n * 1e6,
          (t2.system - t0.system) / n * 1e6, (t2.user - t0.user) / n * 1e6, w2 - w0))
