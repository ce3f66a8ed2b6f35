#!/usr/bin/env python3
"""fs_floor.py DIR [N]: the kernel's price of the spool's per-message file
operations alone, with no engine: for each of N 1 KB pickup files, the
system calls impetus makes per message (counted with strace -c -f on a
2,000-message impetus-bench run): claim (renameat), open + fstat + pread +
close of the body, create + write + close of the .m record, one syncfs per
500 messages (group commit), then at delivery open + pread + close of the
body and two unlinkat. Prints the kernel (sys) CPU per message: a floor
under impetus's engine CPU per message on this file system, whatever the
engine does in user space or on the network."""
import os
import sys
import time

d = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
pick, q = os.path.join(d, "pickup"), os.path.join(d, "queue")
os.makedirs(pick, exist_ok=True)
os.makedirs(q, exist_ok=True)
body = b"x-sender: <a@b.test>\nx-receiver: <c@d.test>\n\n" + b"x" * 1000
for i in range(n):
    fd = os.open(os.path.join(pick, "m%d" % i), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, body)
    os.close(fd)
pfd = os.open(pick, os.O_RDONLY | os.O_DIRECTORY)
qfd = os.open(q, os.O_RDONLY | os.O_DIRECTORY)
t0, w0 = os.times(), time.monotonic()
for i in range(n):
    name, qn = "m%d" % i, "q%d" % i
    os.rename(name, qn, src_dir_fd=pfd, dst_dir_fd=qfd)
    fd = os.open(qn, os.O_RDONLY, dir_fd=qfd)
    os.fstat(fd)
    os.pread(fd, 2048, 0)
    os.close(fd)
    mfd = os.open(qn + ".m", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=qfd)
    os.pwrite(mfd, b"m" * 200, 0)
    os.close(mfd)
    if i % 500 == 499:
        os.fsync(qfd)  # stands in for the one syncfs per batch
t1 = os.times()
for i in range(n):
    qn = "q%d" % i
    fd = os.open(qn, os.O_RDONLY, dir_fd=qfd)
    os.pread(fd, 2048, 0)
    os.close(fd)
    os.unlink(qn, dir_fd=qfd)
    os.unlink(qn + ".m", dir_fd=qfd)
t2, w2 = os.times(), time.monotonic()
print("fs_floor n=%d: ingest side sys %.1f us/msg, delivery side sys %.1f us/msg, total sys %.1f us/msg "
      "(python user %.1f us/msg; wall %.2f s)" % (
          n, (t1.system - t0.system) / n * 1e6, (t2.system - t1.system) / n * 1e6,
          (t2.system - t0.system) / n * 1e6, (t2.user - t0.user) / n * 1e6, w2 - w0))
