#!/usr/bin/env python3
"""Integration test for the configuration commands of the impetus binary.

Runs the real binary: the seed configuration evaluates as written, the
bundled etc/impetus.conf passes --check-config, an error prints
`file:line: message` on stderr with exit status 1, and docs/configuration.md
holds exactly what `impetus --dump-options` generates (no drift).
"""
import os
import subprocess
import sys
import tempfile

IMPETUS, SRC = sys.argv[1], sys.argv[2]
SEED = os.path.join(SRC, "tests/unit/conf/seed.conf")
failures = []


def run(*args):
    p = subprocess.run([IMPETUS, *args], capture_output=True, text=True, timeout=20)
    return p.returncode, p.stdout, p.stderr


def check(name, got, want):
    if got != want:
        failures.append(f"{name}: got {got!r}, want {want!r}")


# The seed, verbatim, evaluates as written.
check("seed user", run("--eval-config", "-c", SEED, "domain", "sparkpost.com",
                       "outbound_smtp_auth_user"), (0, "sparkpost\n", ""))
check("seed type", run("--eval-config", "-c", SEED, "domain", "messagesystems.com",
                       "Outbound_SMTP_AUTH_Type"), (0, "LOGIN\n", ""))
check("seed pass masked", run("--eval-config", "-c", SEED, "domain", "sparkpost.com",
                              "outbound_smtp_auth_pass"), (0, "********\n", ""))
check("seed pass shown", run("--eval-config", "-c", SEED, "--show-secrets", "domain",
                             "sparkpost.com", "outbound_smtp_auth_pass"), (0, "sparkpost\n", ""))
check("seed global", run("--eval-config", "-c", SEED, "keep_message_dicts_in_memory"),
      (0, "true\n", ""))
check("seed check", run("--check-config", "-c", SEED),
      (0, f"impetus: configuration {SEED} is valid\n", ""))

# Momentum's fallback example through the binary.
FB = os.path.join(SRC, "tests/unit/conf/fallback.conf")
for binding, domain, want in [("example", "example.com", "3600"), ("example2", "example.com", "86400"),
                              ("example3", "example.com", "120"), ("example3", "x.org", "86400")]:
    check(f"fallback {binding}/{domain}",
          run("--eval-config", "-c", FB, "binding", binding, "domain", domain, "message_expiration"),
          (0, want + "\n", ""))
GRP = os.path.join(SRC, "tests/unit/conf/group.conf")
check("group eval", run("--eval-config", "-c", GRP, "binding_group", "group1", "binding", "example",
                        "domain", "example.com", "max_outbound_connections"), (0, "15\n", ""))

# The bundled default configuration is valid, also without -c.
BUNDLED = os.path.join(SRC, "etc/impetus.conf")
check("bundled", run("--check-config", "-c", BUNDLED),
      (0, f"impetus: configuration {BUNDLED} is valid\n", ""))
check("bundled default path", run("--check-config")[0], 0)

# Errors: file:line: message on stderr, exit 1.
with tempfile.TemporaryDirectory() as d:
    bad = os.path.join(d, "bad.conf")
    with open(bad, "w") as f:
        f.write("TLS = no\nDomain \"x.com\" {\n  Spoolbase = \"/tmp\"\n}\n")
    check("bad check", run("--check-config", "-c", bad),
          (1, "", f"{bad}:3: option 'Spoolbase' is not valid in domain scope (valid in: global)\n"))
    check("bad eval", run("--eval-config", "-c", bad, "tls")[0], 1)
    check("missing file", run("--check-config", "-c", os.path.join(d, "nope.conf")),
          (1, "", f"{d}/nope.conf: cannot read configuration: No such file or directory\n"))
check("unknown option eval", run("--eval-config", "-c", SEED, "nope"),
      (1, "", "impetus: unknown option 'nope'\n"))
check("eval usage", run("--eval-config", "-c", SEED)[0], 2)

# docs/configuration.md carries the generated reference verbatim.
rc, dump, _ = run("--dump-options")
check("dump rc", rc, 0)
BEGIN = "<!-- BEGIN GENERATED: impetus --dump-options; regenerate with tools/gen-config-doc.sh -->\n"
END = "<!-- END GENERATED -->\n"
with open(os.path.join(SRC, "docs/configuration.md")) as f:
    doc = f.read()
if BEGIN not in doc or END not in doc:
    failures.append("docs/configuration.md lacks the generated-section markers")
else:
    section = doc.split(BEGIN, 1)[1].split(END, 1)[0]
    if section != dump:
        failures.append("docs/configuration.md differs from `impetus --dump-options`; "
                        "run tools/gen-config-doc.sh and commit the result")

for f in failures:
    print("FAIL", f)
print("ok" if not failures else f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
