"""The install layout (issue 20): `meson install` into a temporary DESTDIR
puts each file where an operator expects it, the installed binaries carry
installed paths and no source-tree path, the installed configuration is
valid, the man pages render, and the systemd unit passes `systemd-analyze
verify` (skipped when systemd-analyze is missing); its `systemd-analyze
security` exposure is printed and must be 2.5 or lower.

usage: test_install.py SOURCE_ROOT BUILD_ROOT"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

SKIP = 77


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    src, build = sys.argv[1:3]
    d = tempfile.mkdtemp(prefix="impetus-install.")
    try:
        # the layout of a distribution build (prefix /usr), into DESTDIR
        bd = os.path.join(d, "build")
        r = subprocess.run(["meson", "setup", bd, src, "--prefix=/usr", "-Dtests=false",
                            "-Dbench=false", "-Dsystemdunitdir=/lib/systemd/system"],
                           capture_output=True, text=True, timeout=300)
        check(r.returncode == 0, "meson setup: %s" % r.stdout[-2000:] + r.stderr[-2000:])
        r = subprocess.run(["nice", "meson", "compile", "-C", bd], capture_output=True, text=True,
                           timeout=900)
        check(r.returncode == 0, "meson compile: %s" % r.stdout[-3000:])
        root = os.path.join(d, "root")
        r = subprocess.run(["meson", "install", "-C", bd, "--destdir", root, "--quiet"],
                           capture_output=True, text=True, timeout=300)
        check(r.returncode == 0, "meson install: %s" % r.stdout[-2000:] + r.stderr[-2000:])
        files = set()
        for dp, _dirs, fs in os.walk(root):
            for f in fs:
                files.add(os.path.relpath(os.path.join(dp, f), root))
        want = ["usr/sbin/impetus", "usr/bin/impetus-inject", "usr/bin/impetus-ctl",
                "etc/impetus/impetus.conf", "usr/share/impetus/lua/impetus/boot.lua",
                "usr/share/doc/impetus/README.md", "usr/share/doc/impetus/console.md",
                "usr/share/doc/impetus/security.md",
                "usr/share/man/man8/impetus.8", "usr/share/man/man8/impetus-ctl.8",
                "usr/share/man/man1/impetus-inject.1", "usr/share/man/man5/impetus.conf.5",
                "etc/logrotate.d/impetus", "lib/systemd/system/impetus.service",
                "usr/lib/tmpfiles.d/impetus.conf"]
        for w in want:
            check(w in files, "not installed: %s\n%s" % (w, "\n".join(sorted(files))))
        check(not any("impetus-sink" in f for f in files), "impetus-sink installed without "
              "-Dinstall_sink=true")
        # installed binaries know installed paths, never the source tree
        # (debug info names the sources it was built from, as in any build;
        # the packages strip it, so look at the stripped program)
        for b in ("usr/sbin/impetus", "usr/bin/impetus-inject", "usr/bin/impetus-ctl"):
            stripped = os.path.join(d, "stripped")
            subprocess.run(["strip", "-o", stripped, os.path.join(root, b)], check=True)
            data = open(stripped, "rb").read()
            # an absolute path into the tree (assertions' __FILE__ are relative)
            m = re.search(rb"\x00" + re.escape(src.encode()) + rb"/[^\x00]*", data)
            check(m is None, "%s names the source tree: %r" % (b, m and m.group(0)))
            check(b"/etc/impetus/impetus.conf" in data, "%s lacks /etc/impetus/impetus.conf" % b)
        check(b"/usr/share/impetus/lua" in open(os.path.join(root, "usr/sbin/impetus"), "rb").read(),
              "impetus lacks /usr/share/impetus/lua")
        conf = os.path.join(root, "etc/impetus/impetus.conf")
        text = open(conf).read()
        for p in ("/var/spool/impetus", "/var/log/impetus", "/run/impetus/impetus.sock"):
            check(p in text, "installed configuration lacks %s" % p)
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMPETUS_")}
        r = subprocess.run([os.path.join(root, "usr/sbin/impetus"), "--check-config", "-c", conf],
                           capture_output=True, text=True, timeout=20, env=env)
        check(r.returncode == 0 and "%s is valid" % conf in r.stdout,
              "installed configuration: %r %r" % (r.stdout, r.stderr))
        man5 = open(os.path.join(root, "usr/share/man/man5/impetus.conf.5")).read()
        check("Outbound_SMTP_AUTH_User" in man5 and "Spoolbase" in man5,
              "impetus.conf(5) carries the option table")
        if shutil.which("man"):
            for m in ("man8/impetus.8", "man8/impetus-ctl.8", "man1/impetus-inject.1",
                      "man5/impetus.conf.5"):
                r = subprocess.run(["man", "--warnings", "-l", "-Tutf8",
                                    os.path.join(root, "usr/share/man", m)],
                                   capture_output=True, text=True, timeout=30,
                                   env=dict(env, MANWIDTH="80"))
                check(r.returncode == 0 and len(r.stdout) > 500, "man %s: %s" % (m, r.stderr))
                check("warning" not in r.stderr, "man %s: %s" % (m, r.stderr))
        unit = open(os.path.join(root, "lib/systemd/system/impetus.service")).read()
        for k in ("Type=notify", "ExecReload=", "LogsDirectory=impetus", "RuntimeDirectory=impetus",
                  "StateDirectory=impetus",
                  "ReadWritePaths=/var/spool/impetus", "/usr/sbin/impetus -c /etc/impetus/impetus.conf"):
            check(k in unit, "unit lacks %s" % k)
        lr = open(os.path.join(root, "etc/logrotate.d/impetus")).read()
        check("/usr/bin/impetus-ctl -c /etc/impetus/impetus.conf reopen logs" in lr, "logrotate: %s" % lr)
        sa = shutil.which("systemd-analyze")
        if not sa:
            print("SKIP: systemd-analyze not installed (the layout checks above passed)")
            return SKIP
        # verify the unit as installed, its commands pointing into DESTDIR
        vdir = os.path.join(d, "verify")
        os.makedirs(vdir)
        vunit = os.path.join(vdir, "impetus.service")
        with open(vunit, "w") as f:
            f.write(re.sub(r"(/usr/s?bin/)", root + r"\1", unit))
        venv = dict(env, MANPATH=os.path.join(root, "usr/share/man"))
        r = subprocess.run([sa, "verify", vunit], capture_output=True, text=True, timeout=60,
                           env=venv)
        check(r.returncode == 0 and not r.stderr.strip(),
              "systemd-analyze verify: %d %s %s" % (r.returncode, r.stdout, r.stderr))
        r = subprocess.run([sa, "security", "--offline=true", "--no-pager", vunit],
                           capture_output=True, text=True, timeout=60, env=venv)
        m = re.search(r"Overall exposure level for impetus.service: ([0-9.]+) (\w+)",
                      r.stdout + r.stderr)
        if m:
            print("systemd-analyze security impetus.service: %s %s" % (m.group(1), m.group(2)))
            check(float(m.group(1)) <= 2.5, "exposure %s > 2.5" % m.group(1))
        else:
            print("systemd-analyze security: no score (%s)" % (r.stdout + r.stderr)[-300:])
        print("ok")
        return 0
    finally:
        if os.environ.get("IMPETUS_TEST_KEEP"):
            print("kept: %s" % d, file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
