#!/usr/bin/python3
"""Signatures made by the dkim library, checked by independent verifiers:
python3-dkim (dkimpy; RSA and Ed25519), Perl's Mail::DKIM (RSA only: its
Debian version has no Ed25519) and OpenDKIM's own verifier (opendkim -t;
RSA and Ed25519), so every signature has two verifiers besides ours.

Keys are made at run time with openssl. Every message is signed from its
spool form and verified in the form the SMTP client puts on the wire (line
ends made CRLF, a final CRLF added: smtp_dot.c), which is what the receiver
of DATA and of BDAT gets.

usage: test_dkim_verify.py SIGN_TOOL
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

SKIP = 77


def skip(why):
    print("SKIP:", why)
    sys.exit(SKIP)


try:
    import dkim  # python3-dkim
except ImportError:
    skip("python3-dkim is not installed")
try:
    import nacl  # noqa: F401  (dkimpy needs it for Ed25519)
except ImportError:
    skip("python3-nacl is not installed")
if not shutil.which("openssl"):
    skip("openssl is not installed")
PERL_OK = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"],
                         capture_output=True).returncode == 0
if not PERL_OK:
    skip("libmail-dkim-perl is not installed")

TOOL = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from dkimkeys import make_key, opendkim_verify, OPENDKIM  # noqa: E402
if not OPENDKIM:
    skip("opendkim is not installed (its verifier is the second one for Ed25519)")
PERL = os.path.join(HERE, "verify_maildkim.pl")
DOMAIN = "example.com"


def wire(m):
    m = re.sub(rb"\r\n|\r|\n", b"\r\n", m)
    if not m.endswith(b"\r\n"):
        m += b"\r\n"
    return m


def keys(tmp):
    out = {}
    for name in ("rsa", "ed25519"):
        path = os.path.join(tmp, name + ".key")
        out[name] = (path, make_key(path, name))
    return out


MESSAGES = {
    "plain": b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\n"
             b"Subject: hello\r\nDate: Mon, 07 Dec 2026 21:00:00 +0000\r\n"
             b"Message-ID: <1@example.com>\r\n\r\nHello Bob.\r\n",
    "folded_repeated": b"Received: from a by b; Mon, 07 Dec 2026 21:00:00 +0000\r\n"
                       b"Received: from c\r\n\tby d; Mon, 07 Dec 2026 21:00:01 +0000\r\n"
                       b"From: Alice <alice@example.com>\r\nTo: bob@example.net,\r\n"
                       b"    carol@example.net\r\nSubject:   a   folded\r\n\t subject   \r\n"
                       b"X-Tag: one\r\nX-Tag: two\r\n\r\nBody  with   spaces \t\r\n  and more\r\n",
    "empty_body": b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: empty\r\n\r\n",
    "no_body_at_all": b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: nothing",
    "no_final_crlf": b"From: alice@example.com\r\nSubject: x\r\n\r\nline one\r\nline two",
    "trailing_empty": b"From: alice@example.com\r\nSubject: x\r\n\r\nline\r\n\r\n\r\n \r\n\r\n",
    "eight_bit": (b"From: alice@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
                  b"Content-Type: text/plain; charset=utf-8\r\n"
                  b"Content-Transfer-Encoding: 8bit\r\n\r\n") +
                 "caf\u00e9 \u2014 na\u00efve \u00fcber\r\n".encode() + b"latin1 \xe9\xff\r\n",
    "lf_only": b"From: alice@example.com\nTo: bob@example.net\nSubject: pickup\n\n"
               b"a pickup file\nwith LF line ends\n\n",
    "dot_lines": b"From: alice@example.com\r\nSubject: dots\r\n\r\n.\r\n..leading\r\n.\r\n",
}

HEADERS = "from:to:subject:date:message-id:received:content-type:x-tag"


def milter_exact(m):
    """Whether every header field of m has one SP after its colon and then
    something else: the form OpenDKIM's milter interface rebuilds."""
    head = re.split(rb"\r?\n\r?\n", m, 1)[0]
    fields = [l for l in re.split(rb"\r\n|\n|\r", head) if l and l[:1] not in (b" ", b"\t")]
    return all(re.match(rb"[^:]+: [^ \t]", f) for f in fields)


def sign(key, alg, canon, msg_path, selector, extra=()):
    r = subprocess.run([TOOL, "-k", key, "-a", alg, "-c", canon, "-d", DOMAIN, "-s", selector,
                        "-H", HEADERS, "-t", str(int(time.time())), *extra, msg_path],
                       capture_output=True)
    if r.returncode != 0:
        raise SystemExit("sign failed: %s" % r.stderr.decode())
    return r.stdout


def main():
    tmp = tempfile.mkdtemp(prefix="dkim_verify.")
    failures = []
    checked = 0
    try:
        ks = keys(tmp)
        records = {}
        for alg, (path, rec) in ks.items():
            records[("sel-" + alg + "._domainkey." + DOMAIN + ".").encode()] = rec.encode()

        def dnsfunc(name, timeout=5):
            return records.get(name)

        perl_args = ["sel-rsa._domainkey." + DOMAIN + "=" + ks["rsa"][1]]

        def verify_all(signed, label, nsigs, expect=True, perl=True, opendkim=True):
            nonlocal checked
            d = dkim.DKIM(signed)
            for i in range(nsigs):
                try:
                    ok = d.verify(idx=i, dnsfunc=dnsfunc)
                except dkim.DKIMException as e:
                    ok = False
                    if expect:
                        failures.append("%s: dkimpy sig %d raised %s" % (label, i, e))
                checked += 1
                if bool(ok) != expect:
                    failures.append("%s: dkimpy sig %d: %s" % (label, i, ok))
            if opendkim:
                od = opendkim_verify(signed, records, tmp)
                checked += 1
                if (len(od) == nsigs and all(x == "pass" for x in od)) != expect:
                    failures.append("%s: OpenDKIM: %s" % (label, od))
            if perl:
                p = os.path.join(tmp, "signed.eml")
                with open(p, "wb") as f:
                    f.write(signed)
                r = subprocess.run(["perl", PERL, p, *perl_args], capture_output=True)
                checked += 1
                if (r.returncode == 0) != expect:
                    failures.append("%s: Mail::DKIM: %s" % (label, r.stdout.decode().strip()))

        for mname, m in MESSAGES.items():
            mp = os.path.join(tmp, mname + ".eml")
            with open(mp, "wb") as f:
                f.write(m)
            for alg in ("rsa", "ed25519"):
                for canon in ("simple/simple", "relaxed/relaxed", "relaxed/simple",
                              "simple/relaxed"):
                    for over in ((), ("-o", "from:subject:reply-to")):
                        label = "%s %s %s%s" % (mname, alg, canon, " oversigned" if over else "")
                        sig = sign(ks[alg][0], alg + "-sha256", canon, mp, "sel-" + alg, over)
                        if b"\n" in sig.replace(b"\r\n", b""):
                            failures.append(label + ": bare LF in the signature")
                        signed = sig + wire(m)
                        # OpenDKIM gets header values as a milter does, without
                        # the white space after the colon, and rebuilds them as
                        # "Name: value": simple header canonicalisation of any
                        # other spacing it cannot check.
                        od = canon.startswith("relaxed") or milter_exact(m)
                        verify_all(signed, label, 1, perl=alg == "rsa", opendkim=od)
                        if over and mname == "plain":
                            # An oversigned header added in transit breaks it.
                            bad = b"Reply-To: mallory@evil.example\r\n" + signed
                            verify_all(bad, label + " +Reply-To", 1, expect=False,
                                       perl=alg == "rsa", opendkim=od)
            # Tampering with the body breaks it (the verifiers do check).
            if b"\r\n\r\n" in wire(m):
                sig = sign(ks["rsa"][0], "rsa-sha256", "relaxed/relaxed", mp, "sel-rsa")
                bad = sig + wire(m) + b"tampered\r\n"
                verify_all(bad, mname + " tampered", 1, expect=False)

        # A message that already carries a signature: signed again (the
        # first signature in h= too), both verify.
        mp = os.path.join(tmp, "twice.eml")
        first = sign(ks["ed25519"][0], "ed25519-sha256", "relaxed/relaxed",
                     os.path.join(tmp, "plain.eml"), "sel-ed25519") + wire(MESSAGES["plain"])
        with open(mp, "wb") as f:
            f.write(first)
        r = subprocess.run([TOOL, "-k", ks["rsa"][0], "-a", "rsa-sha256", "-c", "simple/simple",
                            "-d", DOMAIN, "-s", "sel-rsa", "-H", HEADERS + ":dkim-signature", mp],
                           capture_output=True, check=True)
        verify_all(r.stdout + first, "already signed", 2, perl=False)
        # Mail::DKIM: the outer (RSA) one passes; the inner Ed25519 one it cannot check.
        p = os.path.join(tmp, "signed.eml")
        with open(p, "wb") as f:
            f.write(r.stdout + first)
        out = subprocess.run(["perl", PERL, p, *perl_args], capture_output=True).stdout.decode()
        checked += 1
        if not out.startswith("sig 1: pass"):
            failures.append("already signed: Mail::DKIM: " + out.strip())

        # rsa-sha1 is refused for signing.
        r = subprocess.run([TOOL, "-k", ks["rsa"][0], "-a", "rsa-sha1", "-d", DOMAIN, "-s", "x",
                            "-H", "from", mp], capture_output=True)
        if r.returncode == 0:
            failures.append("rsa-sha1 was accepted")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAIL:", f)
    print("%d verifications, %d failures" % (checked, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
