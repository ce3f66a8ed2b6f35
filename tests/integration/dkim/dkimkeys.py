"""Test keys for the DKIM tests, made at run time with openssl."""
import base64
import os
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
