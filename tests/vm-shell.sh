#!/bin/sh
# Shell of `cargo xtask vm`: the test VM with usrbd.ko loaded and the built
# binaries on PATH.  sh tests/vm-shell.sh PLAN
. "$1"
PATH="$(dirname "$USRBD"):$PATH"
export PATH
export USRBD_TMP=/tmp/usrbd-shell
mkdir -p "$USRBD_TMP"
modprobe uinput 2>/dev/null
modprobe loop 2>/dev/null
if insmod "$USRBD_KO"; then
	echo "usrbd.ko loaded ($USRBD_KO)"
fi
cat <<MSG
usrbd test VM, kernel $(uname -r). usrbd and vmkit are on PATH.
  $USRBD_RWDIR is a host directory (survives this VM).
  Scenario helpers: . $USRBD_TESTS/lib.sh  (start_panel, start_server, ...)
  Try: usrbd serve --name usrbd0 --size 64MiB --backend ram &
  Leave with Ctrl-D.
MSG
export PS1='usrbd-vm# '
if command -v bash >/dev/null; then
	exec bash --norc -i
fi
exec sh -i
