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
    # Issue 18 item 7: Momentum's relay idiom is accepted and evaluates to the relay's routes;
    # a #name with no Domain stanza, a bad route and a missing TLS file fail the check.
    relay = os.path.join(d, "relay.conf")
    with open(relay, "w") as f:
        f.write('Domain "#spe_relay" { Routes = ( "smtp://smtp.sparkpostmail.com:587" ) '
                'TLS = "required" }\n'
                'binding "spe_relay_binding" {\n  gateway = "#spe_relay"\n'
                '  Outbound_SMTP_AUTH_Type = "LOGIN" Outbound_SMTP_AUTH_User = "SMTP_Injection"\n'
                '  Outbound_SMTP_AUTH_Pass = "key"\n}\n')
    check("relay check", run("--check-config", "-c", relay),
          (0, f"impetus: configuration {relay} is valid\n", ""))
    check("relay routes", run("--eval-config", "-c", relay, "binding", "spe_relay_binding",
                              "domain", "gmail.com", "Routes"),
          (0, '( "smtp://smtp.sparkpostmail.com:587" )\n', ""))
    check("relay tls", run("--eval-config", "-c", relay, "binding", "spe_relay_binding",
                           "domain", "gmail.com", "TLS"), (0, "required\n", ""))
    with open(relay, "w") as f:
        f.write('Domain "#spe_relay" { Routes = ( "smtp://smtp.sparkpostmail.com:587" ) }\n'
                'binding "b" {\n  gateway = "#spe_rely"\n}\n')
    check("relay typo", run("--check-config", "-c", relay),
          (1, "", f'{relay}:3: Gateway "#spe_rely" names no Domain "#spe_rely" stanza (Momentum\'s '
                  'relay idiom: Domain "#spe_rely" { Routes = ( "smtp://host:port" ) })\n'))
    with open(relay, "w") as f:
        f.write('Domain "x.test" {\n  Routes = ( "smtp://relay.test:250000" )\n}\n')
    check("route port", run("--check-config", "-c", relay),
          (1, "", f"{relay}:2: option 'Routes': \"smtp://relay.test:250000\": the port is not a "
                  "number from 1 to 65535\n"))
    with open(relay, "w") as f:
        f.write('Domain "x.test" {\n  TLS_Ca = "ca.pem"\n}\n')
    check("tls file", run("--check-config", "-c", relay),
          (1, "", f"{relay}:2: option 'TLS_Ca': \"{d}/ca.pem\": No such file or directory\n"))
    with open(os.path.join(d, "ca.pem"), "w") as f:
        f.write("x")
    check("tls file there", run("--check-config", "-c", relay),
          (0, f"impetus: configuration {relay} is valid\n", ""))
    # the Lua scripts are loaded as start-up would: a syntax error or a missing source fails
    # the check (it used to pass, then the engine refused to start)
    with open(os.path.join(d, "bad.lua"), "w") as f:
        f.write("msys.registerModule('bad', {})\nlocal x = = 1\n")
    with open(relay, "w") as f:
        f.write('scriptlet "scriptlet" { script "bad" { source = "bad" } }\n')
    check("lua syntax", run("--check-config", "-c", relay),
          (1, "", f"{d}/bad.lua:2: unexpected symbol near '='\n"))
    with open(relay, "w") as f:
        f.write('scriptlet "scriptlet" { script "gone" { source = "gone" } }\n')
    rc, out, err = run("--check-config", "-c", relay)
    check("lua missing", (rc, out, "source \"gone\" not found" in err), (1, "", True))
    # a datasource whose database file is missing fails every query: the check says so
    with open(relay, "w") as f:
        f.write('Datasource "creds" { uri = ( "sqlite:%s/creds.db" ) }\n' % d)
    check("datasource file", run("--check-config", "-c", relay),
          (1, "", f'datasource creds: "{d}/creds.db": No such file or directory\n'))
    open(os.path.join(d, "creds.db"), "w").close()
    check("datasource file there", run("--check-config", "-c", relay),
          (0, f"impetus: configuration {relay} is valid\n", ""))
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
