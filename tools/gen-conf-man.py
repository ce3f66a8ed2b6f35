#!/usr/bin/env python3
"""gen-conf-man.py: impetus.conf(5) from the option table.

usage: gen-conf-man.py IMPETUS OUTPUT VERSION

Runs `IMPETUS --dump-options` (the same Markdown docs/configuration.md
carries between its GENERATED markers) and turns it into a man page: the
dialect in a few lines, then every option with its type, default, scopes
and whether a reload changes it. Run at build time, so the page always
matches the binary it is installed with."""
import re
import subprocess
import sys

impetus, output, version = sys.argv[1:4]
md = subprocess.run([impetus, "--dump-options"], check=True, capture_output=True,
                    text=True).stdout


def esc(t):
    t = t.replace("\\", "\\e")
    t = re.sub(r"`([^`]*)`", lambda m: "\\fB" + m.group(1) + "\\fR", t)
    return t


def line(t):
    t = esc(t)
    return ("\\&" + t) if t[:1] in (".", "'") else t


out = [
    '.TH IMPETUS.CONF 5 "" "impetus %s" "File Formats"' % version,
    ".SH NAME",
    "impetus.conf \\- configuration of the Impetus mail delivery engine",
    ".SH SYNOPSIS",
    "/etc/impetus/impetus.conf",
    ".SH DESCRIPTION",
    "Impetus reads Momentum's \\fBecelerity.conf\\fR dialect:",
    "\\fIOption\\fR = \\fIvalue\\fR lines; scope stanzas",
    '\\fBDomain "\\fIname\\fB" { }\\fR, \\fBBinding "\\fIname\\fB" { }\\fR and',
    '\\fBBinding_Group "\\fIname\\fB" { }\\fR; module stanzas such as \\fBec_logger { }\\fR;',
    'lists \\fB( "a" "b" )\\fR; dictionaries \\fB[ k = "v" ]\\fR; \\fB#\\fR and \\fB/* */\\fR',
    "comments; \\fBinclude\\fR. Option names are case-insensitive; binding names are not.",
    "An unknown option, a wrong type or a wrong scope is an error that names the file and line;",
    "\\fBimpetus \\-\\-check\\-config\\fR reports it.",
    ".PP",
    "A value is looked up from the most specific scope to the least:",
    "binding_group::binding::domain, binding::domain, binding_group::domain, binding,",
    "binding_group, domain, global, built-in default.",
    "\\fBimpetus \\-\\-eval\\-config\\fR and \\fBimpetus\\-ctl config eval\\fR print the",
    "effective value. \\fIChange\\fR says whether SIGHUP (\\fBimpetus\\-ctl config reload\\fR)",
    "applies a new value or a restart is needed.",
]
header = []
for raw in md.splitlines():
    if raw.startswith("#"):
        title = raw.lstrip("#").strip().replace("`", "")
        level = len(raw) - len(raw.lstrip("#"))
        out.append((".SH " if level <= 3 else ".SS ") + '"' + title.upper() if level <= 3 else
                   ".SS " + '"' + title)
        out[-1] += '"'
    elif raw.startswith("|"):
        cells = [c.strip() for c in raw.strip().strip("|").split("|")]
        if cells[0] == "Option":
            header = cells
            continue
        if set(cells[0]) <= set("- "):
            continue
        row = dict(zip(header, cells))
        facts = [row.get(k) for k in ("Type", "Default", "Scopes", "Change") if row.get(k)]
        facts[1:2] = ["default " + facts[1]] if len(facts) > 1 else []
        out.append(".TP")
        out.append(line("%s (%s)" % (row["Option"], "; ".join(facts))))
        out.append(line(row.get("Description", "")))
    elif raw.strip():
        out.append(".PP")
        out.append(line(raw.strip()))
out += [
    ".SH FILES",
    ".TP",
    "/etc/impetus/impetus.conf",
    "the configuration the service runs with",
    ".SH SEE ALSO",
    "impetus(8), impetus\\-ctl(8), impetus\\-inject(1),",
    "/usr/share/doc/impetus/configuration.md",
]
with open(output, "w") as f:
    f.write("\n".join(out) + "\n")
