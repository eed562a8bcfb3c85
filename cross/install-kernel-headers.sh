#!/bin/sh
# Usage: install-kernel-headers.sh KVER ARCH FLAVOUR...
#   e.g. install-kernel-headers.sh 6.12.107+deb12 arm64 arm64
#        install-kernel-headers.sh newest armhf armmp armmp-lpae
#
# Puts Debian's linux-headers-KVER-FLAVOUR (for ARCH) and -common under
# /usr/src without installing them as packages: installing the foreign-arch
# headers would pull that architecture's native gcc, which conflicts with the
# cross compilers. The build-host tools they link to (scripts/, tools/) come
# from the native linux-kbuild-KVER package, installed here too.
#
# KVER "newest" (or empty) takes the newest 6.12.N+deb12 that the mirror
# offers for every FLAVOUR: Debian drops superseded kernel packages, so a
# pinned version stops building after a while.
#
# /usr/src/linux-headers-FLAVOUR links to the chosen version's directory.
# Afterwards: make -C kmod KDIR=/usr/src/linux-headers-FLAVOUR ARCH=... CROSS_COMPILE=...
set -eu

[ "$#" -ge 3 ] || { echo "usage: $0 KVER|newest ARCH FLAVOUR..." >&2; exit 2; }
kver="$1"; arch="$2"; shift 2

dpkg --add-architecture "${arch}"
apt-get update

if [ -z "${kver}" ] || [ "${kver}" = newest ]; then
	# Versions with every flavour's headers, -common and kbuild.
	kver="$(
		{
			apt-cache search --names-only '^linux-kbuild-6\.12\.[0-9]+\+deb12$' |
				sed -n 's/^linux-kbuild-\([^ ]*\) .*/\1/p'
			apt-cache search --names-only '^linux-headers-6\.12\.[0-9]+\+deb12-common$' |
				sed -n 's/^linux-headers-\([^ ]*\)-common .*/\1/p'
			for flavour in "$@"; do
				apt-cache search --names-only "^linux-headers-6\\.12\\.[0-9]+\\+deb12-${flavour}\$" |
					sed -n "s/^linux-headers-\\([^ ]*\\)-${flavour} .*/\\1/p"
			done
		} | sort | uniq -c | awk -v n="$(($# + 2))" '$1 == n { print $2 }' | sort -V | tail -n 1
	)"
	[ -n "${kver}" ] || { echo "no complete linux-headers-6.12.*+deb12 set for $*" >&2; exit 1; }
	echo "install-kernel-headers: newest complete version: ${kver}"
fi

apt-get install -y --no-install-recommends "linux-kbuild-${kver}"

tmp="$(mktemp -d)"
cd "${tmp}"
apt-get download "linux-headers-${kver}-common"
for flavour in "$@"; do
	apt-get download "linux-headers-${kver}-${flavour}:${arch}"
done
# Only usr/src is taken: the packages also carry lib/modules/KVER/build, and
# `dpkg-deb -x … /` would replace bookworm's /lib -> usr/lib link with a
# directory, losing the dynamic loader. The paths the packages hard-code stay
# valid (the flavour Makefile includes /usr/src/linux-headers-KVER-common/
# Makefile; scripts and tools point at /usr/lib/linux-kbuild-KVER).
mkdir root
for deb in ./*.deb; do
	dpkg-deb -x "${deb}" root
done
cp -a root/usr/src/. /usr/src/
cd /
rm -rf "${tmp}"
for flavour in "$@"; do
	test -e "/usr/src/linux-headers-${kver}-${flavour}/scripts/mod/modpost"
	ln -sfn "linux-headers-${kver}-${flavour}" "/usr/src/linux-headers-${flavour}"
done
test -e /lib/ld-linux-x86-64.so.2 || test -e /lib64/ld-linux-x86-64.so.2
