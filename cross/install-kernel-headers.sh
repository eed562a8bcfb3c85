#!/bin/sh
# Usage: install-kernel-headers.sh KVER ARCH FLAVOUR...
#   e.g. install-kernel-headers.sh 6.12.107+deb12 arm64 arm64
#        install-kernel-headers.sh 6.12.95+deb12 armhf armmp armmp-lpae
#
# Puts Debian's linux-headers-KVER-FLAVOUR (for ARCH) and -common under
# /usr/src without installing them as packages: installing the foreign-arch
# headers would pull that architecture's native gcc, which conflicts with the
# cross compilers. The build-host tools they link to (scripts/, tools/) come
# from the native linux-kbuild-KVER package, installed here too.
# Afterwards: make -C kmod KDIR=/usr/src/linux-headers-KVER-FLAVOUR ARCH=... CROSS_COMPILE=...
set -eu

[ "$#" -ge 3 ] || { echo "usage: $0 KVER ARCH FLAVOUR..." >&2; exit 2; }
kver="$1"; arch="$2"; shift 2

dpkg --add-architecture "${arch}"
apt-get update
apt-get install -y --no-install-recommends "linux-kbuild-${kver}"

tmp="$(mktemp -d)"
cd "${tmp}"
apt-get download "linux-headers-${kver}-common"
for flavour in "$@"; do
	apt-get download "linux-headers-${kver}-${flavour}:${arch}"
done
# Extracting at / keeps every path the packages hard-code valid (the flavour
# Makefile includes /usr/src/linux-headers-KVER-common/Makefile; scripts and
# tools point at /usr/lib/linux-kbuild-KVER).
for deb in ./*.deb; do
	dpkg-deb -x "${deb}" /
done
cd /
rm -rf "${tmp}"
for flavour in "$@"; do
	test -e "/usr/src/linux-headers-${kver}-${flavour}/scripts/mod/modpost"
done
