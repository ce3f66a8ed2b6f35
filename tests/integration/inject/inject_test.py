#!/usr/bin/env python3
"""impetus-inject: sendmail flags, -t, --recipients with bad lines, exit
codes, unreadable spool, -c FILE, full disk (tmpfs; skipped if no mount).
usage: inject_test.py IMPETUS_INJECT"""
import os, shutil, stat, subprocess, sys, tempfile

inject = sys.argv[1]
top = tempfile.mkdtemp(prefix="impetus-inject-")
fails = []


def check(cond, what):
    if not cond:
        fails.append(what)
        print("FAIL:", what)


def run(args, msg, **kw):
    return subprocess.run([inject] + args, input=msg, capture_output=True, **kw)


def pickup_files(spool):
    d = os.path.join(spool, "pickup")
    return sorted(os.listdir(d))


def read_pickup(spool, name):
    with open(os.path.join(spool, "pickup", name), "rb") as f:
        return f.read().decode()


def new_spool(name):
    s = os.path.join(top, name)
    os.makedirs(os.path.join(s, "pickup"))
    return s


MSG = b"Subject: hello\nTo: Someone <x@example.com>\n\nbody line\n"
try:
    # Plain sendmail use: -f, -i, -oi, recipients as arguments.
    s = new_spool("plain")
    r = run(["-oi", "-i", "-f", "sender@example.com", "--spool", s, "a@example.com",
             "b@example.com"], MSG)
    check(r.returncode == 0, f"plain inject exit {r.returncode} {r.stderr}")
    files = pickup_files(s)
    check(len(files) == 1 and not files[0].startswith("."), f"one final file: {files}")
    if files:
        txt = read_pickup(s, files[0])
        check(txt.startswith("x-sender: <sender@example.com>\nx-receiver: <a@example.com>\n"
                             "x-receiver: <b@example.com>\n"), "envelope lines")
        check("From: <sender@example.com>\n" in txt, "From: added when missing")
        check(txt.endswith("body line\n"), "message kept")
        mode = stat.S_IMODE(os.stat(os.path.join(s, "pickup", files[0])).st_mode)
        check(mode == 0o600, f"mode {oct(mode)}")
    # -F full name, -f<addr> joined, null sender.
    s = new_spool("fullname")
    r = run(["-fjoined@example.com", "-F", "Jo Doe", "--spool", s, "c@example.com"], MSG)
    check(r.returncode == 0 and 'From: "Jo Doe" <joined@example.com>' in read_pickup(s, pickup_files(s)[0]),
          "-F NAME")
    s = new_spool("null")
    r = run(["-f", "<>", "--spool", s, "c@example.com"], MSG)
    check(r.returncode == 0 and read_pickup(s, pickup_files(s)[0]).startswith("x-sender: <>\n"),
          "null sender")
    # -t: To/Cc/Bcc (folded, with names and comments); Bcc removed.
    s = new_spool("t")
    m = (b'From: me@example.com\nTo: "Doe, J" <j@example.com>, k@example.com (Kay)\n'
         b"Cc: team: l@example.com, m@example.com;\nBcc: hidden@example.com,\n"
         b" other@example.com\nSubject: t\n\nbody\nTo: notaheader@example.com\n")
    r = run(["-t", "-f", "me@example.com", "--spool", s], m)
    check(r.returncode == 0, f"-t exit {r.returncode} {r.stderr}")
    txt = read_pickup(s, pickup_files(s)[0])
    rc = [l[len("x-receiver: <"):-1] for l in txt.splitlines() if l.startswith("x-receiver")]
    check(rc == ["j@example.com", "k@example.com", "l@example.com", "m@example.com",
                 "hidden@example.com", "other@example.com"], f"-t recipients {rc}")
    check("Bcc" not in txt and "other@example.com\n Subject" not in txt and "hidden" not in txt.split("x-receiver: <other@example.com>\n", 1)[1],
          "Bcc removed")
    check("notaheader" not in "".join(rc), "body not scanned")
    # No recipients, bad recipient, bad sender, unsupported option.
    s = new_spool("errors")
    r = run(["-f", "a@example.com", "--spool", s], MSG)
    check(r.returncode == 65 and b"no recipients" in r.stderr, f"no recipients: {r.returncode} {r.stderr}")
    r = run(["-f", "a@example.com", "--spool", s, "not-an-address"], MSG)
    check(r.returncode == 65 and b"bad recipient" in r.stderr, "bad recipient")
    r = run(["-f", "bad sender", "--spool", s, "a@example.com"], MSG)
    check(r.returncode == 65 and b"bad sender" in r.stderr, "bad sender")
    r = run(["-bp", "--spool", s], MSG)
    check(r.returncode == 64, "unsupported option")
    # A message the engine would reject is refused up front.
    r = run(["-f", "a@example.com", "--spool", s, "b@example.com"], b"Subject: " + b"x" * 2000 + b"\n\nb\n")
    check(r.returncode == 65 and b"would reject" in r.stderr, f"long header: {r.stderr}")
    check(pickup_files(s) == [], f"nothing written on errors: {pickup_files(s)}")
    # Unreadable / missing spool.
    r = run(["-f", "a@example.com", "--spool", os.path.join(top, "missing"), "b@example.com"], MSG)
    check(r.returncode == 73 and b"pickup directory" in r.stderr, f"missing spool: {r.returncode} {r.stderr}")
    # -c FILE: Spoolbase relative to the configuration file.
    s = new_spool("conf")
    with open(os.path.join(top, "impetus.conf"), "w") as f:
        f.write('# test\nSpoolbase = "conf"\nDomain "x" { }\n')
    r = run(["-c", os.path.join(top, "impetus.conf"), "-f", "a@example.com", "b@example.com"], MSG)
    check(r.returncode == 0 and len(pickup_files(s)) == 1, f"-c FILE: {r.returncode} {r.stderr}")
    r = run(["-c", os.path.join(top, "nope.conf"), "-f", "a@example.com", "b@example.com"], MSG)
    check(r.returncode == 66 and b"nope.conf" in r.stderr, f"missing config: {r.returncode} {r.stderr}")
    # Bulk: 250 good lines, 3 bad, comments and blanks; batches of 100.
    s = new_spool("bulk")
    lines = ["# list", ""]
    for i in range(250):
        lines.append(f"<user{i}@example.com>" if i % 2 else f"user{i}@example.com")
        if i == 10:
            lines.append("broken address")
        if i == 20:
            lines.append("x@")
        if i == 30:
            lines.append("   ")
    lines.append("a..b@example.com")
    rf = os.path.join(top, "rcpts.txt")
    with open(rf, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = run(["--recipients", rf, "-f", "a@example.com", "--spool", s], MSG)
    err = r.stderr.decode()
    check(r.returncode == 1, f"bulk with bad lines exits 1, got {r.returncode}")
    check("rcpts.txt:14: bad address" in err and "rcpts.txt:25:" in err, f"line numbers: {err}")
    check("queued 250 recipients in 3 pickup files, 3 invalid lines skipped" in err, f"summary: {err}")
    counts = sorted(read_pickup(s, n).count("x-receiver:") for n in pickup_files(s))
    check(counts == [50, 100, 100], f"batches {counts}")
    allr = set()
    for n in pickup_files(s):
        allr |= {l for l in read_pickup(s, n).splitlines() if l.startswith("x-receiver")}
    check(len(allr) == 250, "every recipient once")
    s2 = new_spool("bulkgood")
    with open(rf, "w") as f:
        f.write("a@example.com\nb@example.com\n")
    r = run(["--recipients", rf, "-f", "a@example.com", "--spool", s2, "-q"], MSG)
    check(r.returncode == 0 and len(pickup_files(s2)) == 1, "bulk all good exits 0")
    with open(rf, "w") as f:
        f.write("bad\n# only bad\n")
    r = run(["--recipients", rf, "-f", "a@example.com", "--spool", s2], MSG)
    check(r.returncode == 65, "bulk with no valid line exits 65")
    # Date: and Message-ID: are added when missing (as Postfix's cleanup
    # does), kept when present, and left alone with --no-header-fixup.
    import re
    s = new_spool("fixup")
    r = run(["-f", "a@example.com", "--spool", s, "r@example.com"], MSG)
    txt = read_pickup(s, pickup_files(s)[0]) if r.returncode == 0 else ""
    check(re.search(r"^Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} [A-Z][a-z]{2} \d{4} "
                    r"\d\d:\d\d:\d\d [+-]\d{4}$", txt, re.M), f"Date: added: {txt!r}")
    check(re.search(r"^Message-ID: <[0-9A-Za-z.-]+@example\.com>$", txt, re.M),
          f"Message-ID: added: {txt!r}")
    check(txt.count("Date:") == 1 and txt.count("Message-ID:") == 1, "added once")
    s = new_spool("fixup-kept")
    have = b"Date: Tue, 1 Dec 2026 10:00:00 +0000\nMessage-Id: <kept@x.example>\n" + MSG
    r = run(["-f", "a@example.com", "--spool", s, "r@example.com"], have)
    txt = read_pickup(s, pickup_files(s)[0]) if r.returncode == 0 else ""
    check("Date: Tue, 1 Dec 2026 10:00:00 +0000\n" in txt and txt.count("Date:") == 1,
          f"Date: kept: {txt!r}")
    check("Message-Id: <kept@x.example>\n" in txt and txt.lower().count("message-id:") == 1,
          f"Message-ID: kept: {txt!r}")
    s = new_spool("fixup-off")
    r = run(["--no-header-fixup", "-f", "a@example.com", "--spool", s, "r@example.com"], MSG)
    txt = read_pickup(s, pickup_files(s)[0]) if r.returncode == 0 else ""
    check(r.returncode == 0 and "Date:" not in txt and "Message-ID:" not in txt,
          f"--no-header-fixup: {txt!r}")
    # impetus-inject links neither LuaJIT, SQLite, c-ares nor liburing.
    if shutil.which("readelf"):
        dyn = subprocess.run(["readelf", "-d", inject], capture_output=True, text=True).stdout
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)
        check(needed, f"readelf -d shows NEEDED entries: {dyn[:200]!r}")
        for lib in ("luajit", "sqlite", "cares", "uring"):
            check(not any(lib in n for n in needed), f"impetus-inject links {lib}: {needed}")
    else:
        print("note: readelf missing, linked-library check skipped")
    # --count for benchmarks.
    s = new_spool("count")
    r = run(["--count", "300", "-f", "a@example.com", "--spool", s, "-q", "r@example.com"], MSG)
    check(r.returncode == 0 and len(pickup_files(s)) == 300, f"--count: {len(pickup_files(s))}")
    # Full disk: nothing half-written is left behind.
    mnt = os.path.join(top, "mnt")
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
                      capture_output=True).returncode == 0:
        try:
            os.makedirs(os.path.join(mnt, "pickup"))
            big = b"Subject: big\n\n" + (b"z" * 70 + b"\n") * 5000  # ~350 KB
            r = run(["--count", "5", "-f", "a@example.com", "--spool", mnt, "-q", "r@example.com"], big)
            check(r.returncode == 75 and b"disk full" in r.stderr, f"disk full: {r.returncode} {r.stderr}")
            names = os.listdir(os.path.join(mnt, "pickup"))
            check(all(not n.startswith(".") for n in names), f"temporary files left: {names}")
            for n in names:
                check(os.path.getsize(os.path.join(mnt, "pickup", n)) > len(big), "complete file")
        finally:
            subprocess.run(["umount", mnt])
    else:
        print("note: full-disk part skipped (cannot mount tmpfs)")
finally:
    shutil.rmtree(top, ignore_errors=True)
if fails:
    sys.exit(f"{len(fails)} checks failed")
print("ok")
