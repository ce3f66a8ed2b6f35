#!/usr/bin/env bash
# gen-config-doc.sh: regenerate the option reference in docs/configuration.md
# from the option table (impetus --dump-options), between its markers.
# Usage: tools/gen-config-doc.sh [BUILD_DIR]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
doc=docs/configuration.md
"$build/src/main/impetus" --dump-options > "$doc.gen"
python3 - "$doc" "$doc.gen" <<'PY'
import sys
doc, gen = sys.argv[1], sys.argv[2]
BEGIN = "<!-- BEGIN GENERATED: impetus --dump-options; regenerate with tools/gen-config-doc.sh -->\n"
END = "<!-- END GENERATED -->\n"
text = open(doc).read()
head, rest = text.split(BEGIN, 1)
_, tail = rest.split(END, 1)
open(doc, "w").write(head + BEGIN + open(gen).read() + END + tail)
PY
rm -f "$doc.gen"
