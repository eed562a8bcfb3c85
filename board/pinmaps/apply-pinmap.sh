#!/bin/sh
# Usage: apply-pinmap.sh CONFIG PINMAP > OUTPUT
#
# Prints the service config CONFIG with its [panel] table replaced by the one in
# PINMAP (a board/pinmaps/*.toml file, which holds only [panel]). Every image
# (Yocto, Buildroot) installs the same default config this way, with the panel
# wiring of the board it was built for.
set -eu

if [ "$#" -ne 2 ]; then
	echo "usage: $0 CONFIG PINMAP > OUTPUT" >&2
	exit 2
fi
for f in "$1" "$2"; do
	[ -r "$f" ] || { echo "$0: cannot read $f" >&2; exit 1; }
done

# A table header starts a new section; drop the lines of CONFIG's [panel]
# (up to the next header), then append PINMAP whole.
awk -v config="$1" '
	FILENAME == config {
		if ($0 ~ /^[ \t]*\[/)
			skip = ($0 ~ /^[ \t]*\[panel\][ \t]*(#.*)?$/)
		if (!skip)
			print
		next
	}
	FNR == 1 { print "" }
	{ print }
' "$1" "$2"
