"""The Debian package (issue 20): `dpkg-buildpackage -us -uc -b` on a copy
of this tree, the package's file list, its maintainer scripts and conffiles,
and `lintian` without errors. SKIP (77) when dpkg-buildpackage, lintian or a
build dependency is missing. A few minutes: suite slow.

usage: test_deb.py SOURCE_ROOT"""
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
    src = sys.argv[1]
    for tool in ("dpkg-buildpackage", "dpkg-deb", "lintian", "git"):
        if not shutil.which(tool):
            print("SKIP: %s not installed" % tool)
            return SKIP
    r = subprocess.run(["dpkg-checkbuilddeps"], cwd=src, capture_output=True, text=True)
    if r.returncode != 0:
        print("SKIP: build dependencies missing: %s" % r.stderr.strip())
        return SKIP
    d = tempfile.mkdtemp(prefix="impetus-deb.")
    try:
        tree = os.path.join(d, "impetus")
        os.mkdir(tree)
        # the tree as git sees it (tracked and new files, nothing ignored)
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src,
                               check=True, capture_output=True).stdout.split(b"\0")
        for f in files:
            if not f or not os.path.isfile(os.path.join(src.encode(), f)):
                continue
            dst = os.path.join(tree.encode(), f)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(src.encode(), f), dst)
        r = subprocess.run(["nice", "dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree,
                           capture_output=True, text=True, timeout=1500)
        check(r.returncode == 0, "dpkg-buildpackage: %d\n%s" % (r.returncode,
                                                                 (r.stdout + r.stderr)[-4000:]))
        debs = [f for f in os.listdir(d) if re.match(r"impetus_.*_.*\.deb$", f)]
        check(len(debs) == 1, "one package: %s" % os.listdir(d))
        deb = os.path.join(d, debs[0])
        listing = subprocess.run(["dpkg-deb", "-c", deb], check=True, capture_output=True,
                                 text=True).stdout
        paths = {l.split()[-1].lstrip(".") for l in listing.splitlines()}
        for p in ("/usr/sbin/impetus", "/usr/bin/impetus-inject", "/usr/bin/impetus-ctl",
                  "/etc/impetus/impetus.conf", "/etc/logrotate.d/impetus",
                  "/lib/systemd/system/impetus.service", "/usr/lib/tmpfiles.d/impetus.conf",
                  "/usr/share/impetus/lua/impetus/boot.lua", "/usr/share/doc/impetus/copyright",
                  "/usr/share/doc/impetus/security.md.gz", "/usr/share/man/man8/impetus.8.gz",
                  "/usr/share/man/man8/impetus-ctl.8.gz", "/usr/share/man/man1/impetus-inject.1.gz",
                  "/usr/share/man/man5/impetus.conf.5.gz"):
            check(p in paths, "the package lacks %s:\n%s" % (p, listing))
        check(not any("impetus-sink" in p for p in paths), "impetus-sink in the package")
        check(not any(p.startswith("/usr/local") for p in paths), "files under /usr/local")
        ctrl = os.path.join(d, "control")
        subprocess.run(["dpkg-deb", "-e", deb, ctrl], check=True)
        conffiles = open(os.path.join(ctrl, "conffiles")).read().split()
        check("/etc/impetus/impetus.conf" in conffiles and "/etc/logrotate.d/impetus" in conffiles,
              "conffiles: %s" % conffiles)
        postinst = open(os.path.join(ctrl, "postinst")).read()
        for want in ("adduser --system", "impetus-submit", "dpkg-statoverride",
                     "/var/spool/impetus/pickup", "deb-systemd-helper", "systemd-tmpfiles"):
            check(want in postinst, "postinst lacks %s" % want)
        deps = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], check=True, capture_output=True,
                              text=True).stdout
        for lib in ("liburing", "libluajit", "libssl", "libjemalloc", "adduser"):
            check(lib in deps, "Depends lacks %s: %s" % (lib, deps))
        r = subprocess.run(["lintian", "--no-tag-display-limit", deb], capture_output=True,
                           text=True, timeout=600)
        out = r.stdout + r.stderr
        print(out)
        errors = [l for l in out.splitlines() if l.startswith("E:")]
        check(not errors, "lintian errors:\n%s" % "\n".join(errors))
        print("package %s: %d files, lintian: no errors" % (debs[0], len(paths)))
        return 0
    finally:
        if os.environ.get("IMPETUS_TEST_KEEP"):
            print("kept: %s" % d, file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
