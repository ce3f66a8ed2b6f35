"""Test keys for the DKIM tests, made at run time with openssl, and
OpenDKIM's verifier run on a message with those keys."""
import base64
import os
import re
import shutil
import subprocess


def make_key(path, kind):
    """A new private key at path (mode 0600): kind "rsa" (2048 bits) or
    "ed25519". Returns its DNS record "v=DKIM1; k=...; p=..."."""
    args = (["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"] if kind == "rsa"
            else ["-algorithm", "ED25519"])
    subprocess.run(["openssl", "genpkey", *args, "-out", path], check=True, capture_output=True)
    os.chmod(path, 0o600)
    der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    if kind == "ed25519":
        der = der[-32:]  # the raw public key ends the SubjectPublicKeyInfo
    return "v=DKIM1; k=%s; p=%s" % (kind, base64.b64encode(der).decode())


OPENDKIM = next((p for p in ("/usr/sbin/opendkim", shutil.which("opendkim") or "")
                 if p and os.access(p, os.X_OK)), None)


def opendkim_verify(raw, records, tmp):
    """OpenDKIM's own verifier (Debian's opendkim in test mode, `opendkim -t`,
    the keys given by TestDNSData instead of DNS): the dkim= result of each
    signature of raw, in the order OpenDKIM reports them ("pass", "fail",
    ...); None when opendkim is not installed. records: {name: TXT record},
    names with or without the final dot, str or bytes."""
    if not OPENDKIM:
        return None
    def s(x):
        return x.decode() if isinstance(x, bytes) else x
    recs = os.path.join(tmp, "opendkim.keys")
    with open(recs, "w") as f:
        for name, rec in records.items():
            f.write("%s %s\n" % (s(name).rstrip("."), s(rec)))
    conf = os.path.join(tmp, "opendkim.conf")
    with open(conf, "w") as f:
        f.write("Syslog no\nMode v\nAlwaysAddARHeader yes\nTestDNSData file:%s\n" % recs)
    msg = os.path.join(tmp, "opendkim.eml")
    with open(msg, "wb") as f:
        f.write(raw)
    r = subprocess.run([OPENDKIM, "-x", conf, "-t", msg, "-vv"], capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    ar = out.split("hname='Authentication-Results'", 1)
    return re.findall(r"\bdkim=(\w+)", ar[1]) if len(ar) > 1 else []
