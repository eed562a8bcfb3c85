#!/bin/sh
# In-guest benchmark runner (started by `cargo xtask bench` through virtme-ng).
#
#   sh tests/bench/guest.sh PLAN
#
# PLAN is a shell fragment written by the xtask. It sets:
#   USRBD USRBD_KO RUBLK  the service, the module, the rublk binary
#   JOBS_DIR              tests/bench/jobs (one fio job file per job)
#   JOBS SYSTEMS          space-separated job and system names, in run order
#   RUNS RUNTIME SIZE_MB  repetitions, seconds per fio run, device size
#   PROFILE               1: also count syscalls and switches per request,
#                         and the same with usrbd's poll_spin_us=POLL_US
#   OUT                   host directory for the results
#
# Every device is set up once and filled, then the runs go round-robin
# (run 1 of every job on every system, then run 2...) so a burst of load
# on the host spreads over all systems instead of hitting one.
#
# Writes, one tab-separated line each:
#   OUT/results.tsv  run SYSTEM JOB RUN IOPS BW_BYTES P99_NS CPU_TICKS DEV_BYTES RSS_KB
#   OUT/profile.tsv  prof SYSTEM JOB REQUESTS SECONDS SYSCALLS IOCTLS URING_ENTERS CSW SLEEPS
#   OUT/guest.tsv    KEY VALUE (kernel, CPU, memory, tool versions)
# fio's JSON output of every run lands in OUT/fio/. Progress lines start with
# "bench: [UPTIME]"; the last one says "done" or "FAILED: why".
# DEV_<system> and PID_<system> are read back through `var`.
# shellcheck disable=SC2034
set -u

# shellcheck source=/dev/null
. "$1"

MNT=/tmp/usrbd-bench
HZ=$(getconf CLK_TCK)
SNAP=$(dirname "$0")/snap.sh
WINDOW=$(dirname "$0")/window.sh
mkdir -p "$OUT/fio" "$OUT/logs" "$OUT/work" "$OUT/acct"
: >"$OUT/results.tsv"
: >"$OUT/profile.tsv"

# Progress, stamped with the guest's uptime.
say() { echo "bench: [$(cut -d' ' -f1 /proc/uptime)] $*"; }

die() {
	say "FAILED: $*"
	exit 1
}

# wait_for SECONDS COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
	n=$(($1 * 5))
	shift
	until "$@" 2>/dev/null; do
		n=$((n - 1))
		[ "$n" -gt 0 ] || return 1
		sleep 0.2
	done
}

# pid_of EXE: the first process running EXE (the service of a system).
pid_of() {
	for d in /proc/[0-9]*; do
		[ "$(readlink "$d/exe" 2>/dev/null)" = "$1" ] && {
			echo "${d#/proc/}"
			return 0
		}
	done
	return 1
}

rss_kb() {
	[ "$1" = - ] && {
		echo 0
		return
	}
	awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# dev_ios DEV: requests completed (reads plus writes).
dev_ios() { awk '{ printf "%d\n", $1 + $5 }' "/sys/block/$1/stat"; }

has_size() { [ "$(cat "/sys/block/$1/size" 2>/dev/null || echo 0)" -gt 0 ]; }

# --- the systems ------------------------------------------------------------
# setup_SYSTEM sets DEV_<system> (the block device's name) and PID_<system>
# (the serving process, or "-" when the kernel serves alone).

setup_brd() {
	modprobe brd rd_nr=1 rd_size=$((SIZE_MB * 1024)) max_part=0 || return 1
	DEV_brd=ram0 PID_brd=-
}

setup_null_blk() {
	modprobe null_blk nr_devices=1 gb=$(((SIZE_MB + 1023) / 1024)) \
		submit_queues=2 hw_queue_depth=64 || return 1
	DEV_null_blk=nullb0 PID_null_blk=-
}

# serve NAME LOG ARGS...: starts the usrbd service and waits until it serves.
serve() {
	name=$1
	log=$2
	shift 2
	"$USRBD" serve --name "$name" --size "${SIZE_MB}MiB" --queues 2 --depth 64 \
		"$@" >"$log" 2>&1 &
	SERVE_PID=$!
	wait_for 60 grep -q "usrbd: serving /dev/$name" "$log" || {
		cat "$log"
		return 1
	}
	wait_for 10 test -b "/dev/$name"
}

setup_usrbd_ram() {
	grep -q '^usrbd ' /proc/modules || insmod "$USRBD_KO" || return 1
	serve usrbd0 "$OUT/logs/usrbd-ram.log" --backend ram || return 1
	DEV_usrbd_ram=usrbd0 PID_usrbd_ram=$SERVE_PID
}

setup_usrbd_file() {
	grep -q '^usrbd ' /proc/modules || insmod "$USRBD_KO" || return 1
	serve usrbd1 "$OUT/logs/usrbd-file.log" --backend file --file "$MNT/usrbd.img" ||
		return 1
	DEV_usrbd_file=usrbd1 PID_usrbd_file=$SERVE_PID
}

setup_ublk_loop() {
	modprobe ublk_drv || return 1
	truncate -s "${SIZE_MB}M" "$MNT/ublk.img"
	# tmpfs has no O_DIRECT: buffered, as usrbd's file backend on the same tmpfs.
	"$RUBLK" add loop -f "$MNT/ublk.img" --buffered-io -q 2 -d 64 \
		>"$OUT/logs/ublk-loop.log" 2>&1 || {
		cat "$OUT/logs/ublk-loop.log"
		return 1
	}
	wait_for 30 has_size ublkb0 || return 1
	DEV_ublk_loop=ublkb0
	PID_ublk_loop=$(pid_of "$(readlink -f "$RUBLK")") || return 1
}

setup_nbd() {
	modprobe nbd nbds_max=1 || return 1
	truncate -s "${SIZE_MB}M" "$MNT/nbd.img"
	# -c: qemu-nbd serves on the unix socket -k and connects the kernel's nbd
	# client to it.
	qemu-nbd -f raw --fork -k /run/bench-nbd.sock -c /dev/nbd0 "$MNT/nbd.img" \
		>"$OUT/logs/nbd.log" 2>&1 || {
		cat "$OUT/logs/nbd.log"
		return 1
	}
	wait_for 30 has_size nbd0 || return 1
	DEV_nbd=nbd0
	PID_nbd=$(pid_of "$(readlink -f "$(command -v qemu-nbd)")") || return 1
}

var() { eval "echo \"\${$1_$(echo "$2" | tr - _)}\""; }

# fio_env SYSTEM [SECONDS] COMMAND...: COMMAND with the job files' variables.
fio_env() {
	dev=/dev/$(var DEV "$1")
	secs=$2
	shift 2
	BENCH_DEV=$dev BENCH_SIZE="${SIZE_MB}M" BENCH_RUNTIME=$secs "$@"
}

# fill DEV: write every block once, so reads never hit holes.
fill() {
	fio --name=fill --filename="/dev/$1" --ioengine=io_uring --direct=1 --rw=write \
		--bs=1M --iodepth=8 --size="${SIZE_MB}M" --output=/dev/null \
		>>"$OUT/logs/fio.err" 2>&1
}

# run_block SYSTEM RUN: every job once, in one fio process (starting fio
# under TCG costs seconds: it links many libraries). fio runs several job
# files one after the other; the hooks appended to each copy snapshot the
# server's CPU time and the device's byte counters around that job alone.
run_block() {
	dev=$(var DEV "$1")
	pid=$(var PID "$1")
	json="$OUT/fio/$1.$2.json"
	files=""
	for job in $JOBS; do
		f="$OUT/work/$1.$2.$job.fio"
		a="$OUT/acct/$1.$2.$job"
		cp "$JOBS_DIR/$job.fio" "$f"
		printf 'exec_prerun=sh %s %s %s %s\nexec_postrun=sh %s %s %s %s\n' \
			"$SNAP" "$a.pre" "$pid" "$dev" "$SNAP" "$a.post" "$pid" "$dev" >>"$f"
		files="$files $f"
	done
	# fio writes the hooks' output to files in its working directory.
	# shellcheck disable=SC2086 # one argument per job file
	(cd "$OUT/work" && fio_env "$1" "$RUNTIME" fio --output-format=json --output="$json" \
		$files >>"$OUT/logs/fio.err" 2>&1) ||
		die "fio on $1 (run $2) failed: $(tail -n 5 "$OUT/logs/fio.err")"
	rss=$(rss_kb "$pid")
	for job in $JOBS; do
		a="$OUT/acct/$1.$2.$job"
		if ! { read -r t0 b0 <"$a.pre" && read -r t1 b1 <"$a.post"; }; then
			die "no CPU/byte snapshots for $1 $job (run $2)"
		fi
		# Each job only reads or only writes, so the other side adds zero.
		perf=$(jq -r --arg j "$job" '.jobs[] | select(.jobname == $j) | [
			(.read.iops + .write.iops),
			(.read.bw_bytes + .write.bw_bytes),
			((.read.clat_ns.percentile["99.000000"] // 0)
				+ (.write.clat_ns.percentile["99.000000"] // 0))
			] | @tsv' "$json") || die "cannot read $json"
		[ -n "$perf" ] || die "no result for $job in $json"
		printf 'run\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$job" "$2" "$perf" \
			"$((t1 - t0))" "$((b1 - b0))" "$rss" >>"$OUT/results.tsv"
		say "$1 $job run $2: $(echo "$perf" | cut -f1) IOPS"
	done
}

# count EVENT FILE: the value of one event in `perf stat -x,` output.
count() { awk -F, -v e="$1" '$3 == e { print ($1 ~ /^[0-9.]+$/) ? $1 : 0; exit }' "$2"; }

# profile SYSTEM JOB [LABEL]: one more, longer run, with perf counting the
# service's syscalls and context switches (window.sh adds its sleeps:
# voluntary switches). perf starts its workload (the
# window script) only once the counters are live, so the requests counted in
# that script fall in exactly the counted window, however slowly perf starts.
profile() {
	label=${3:-$1}
	dev=$(var DEV "$1")
	pid=$(var PID "$1")
	stat="$OUT/logs/perf.$label.$2.txt"
	win="$OUT/logs/window.$label.$2"
	pidf="$OUT/logs/fio.pid"
	# exec: the pid written is fio's own, so the window's end can stop it.
	# shellcheck disable=SC2016 # $$ and $1 belong to the inner shell
	fio_env "$1" 600 sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$pidf" \
		fio --output=/dev/null "$JOBS_DIR/$2.fio" >>"$OUT/logs/fio.err" 2>&1 &
	fio_pid=$!
	sleep 2
	perf stat -x, -p "$pid" \
		-e raw_syscalls:sys_enter,syscalls:sys_enter_ioctl,syscalls:sys_enter_io_uring_enter,context-switches \
		-o "$stat" -- sh "$WINDOW" "$dev" "$pid" "$RUNTIME" \
		>"$win" 2>>"$OUT/logs/perf.err"
	kill -INT "$(cat "$pidf")" 2>/dev/null
	wait "$fio_pid"
	# The window script printed two lines of three numbers.
	# shellcheck disable=SC2046
	set -- "$1" "$2" $(cat "$win")
	[ $# -eq 8 ] || die "profiling $1 $2: perf did not run the window ($(tail -n 3 "$OUT/logs/perf.err"))"
	printf 'prof\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$2" "$(($6 - $3))" \
		"$(awk -v a="$4" -v b="$7" 'BEGIN { print b - a }')" \
		"$(count raw_syscalls:sys_enter "$stat")" \
		"$(count syscalls:sys_enter_ioctl "$stat")" \
		"$(count syscalls:sys_enter_io_uring_enter "$stat")" \
		"$(count context-switches "$stat")" "$(($8 - $5))" >>"$OUT/profile.tsv"
	say "profiled $label $2"
}

# --- the run ----------------------------------------------------------------
{
	echo "kernel	$(uname -r)"
	echo "cpu	$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	echo "vcpus	$(nproc)"
	echo "memory_kb	$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
	echo "fio	$(fio --version)"
	echo "rublk	$("$RUBLK" --version 2>&1 | head -n 1)"
	echo "qemu_nbd	$(qemu-nbd --version | head -n 1)"
	echo "hz	$HZ"
} >"$OUT/guest.tsv"

mkdir -p "$MNT"
mount -t tmpfs -o size=$((SIZE_MB * 4))M tmpfs "$MNT" || die "mount tmpfs on $MNT"
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null

for s in $SYSTEMS; do
	say "setting up $s"
	"setup_$(echo "$s" | tr - _)" || die "setting up $s failed"
	if [ "$s" != null_blk ]; then
		fill "$(var DEV "$s")" || die "filling $s failed: $(tail -n 5 "$OUT/logs/fio.err")"
	fi
	say "$s is /dev/$(var DEV "$s") (server pid $(var PID "$s"))"
done

if [ -r /sys/module/usrbd/parameters/poll_spin_us ]; then
	echo "poll_spin_us	$(cat /sys/module/usrbd/parameters/poll_spin_us)" >>"$OUT/guest.tsv"
fi

run=1
while [ "$run" -le "$RUNS" ]; do
	for s in $SYSTEMS; do
		run_block "$s" "$run"
	done
	run=$((run + 1))
done

if [ "$PROFILE" = 1 ]; then
	for s in $SYSTEMS; do
		[ "$(var PID "$s")" = - ] && continue
		for job in randread-4k-qd1 randread-4k-qd32 seqread-1m-qd8; do
			profile "$s" "$job"
		done
	done
fi

# The module's optional busy-poll before a worker sleeps, against the same
# jobs: what it does to the sleep/wake round trip per request.
POLL=/sys/module/usrbd/parameters/poll_spin_us
if [ "$PROFILE" = 1 ] && [ -n "${PID_usrbd_ram:-}" ] && [ -w "$POLL" ]; then
	was=$(cat "$POLL")
	echo "$POLL_US" >"$POLL"
	for job in randread-4k-qd1 randread-4k-qd32; do
		profile usrbd-ram "$job" "usrbd-ram+poll_spin_us=$POLL_US"
	done
	echo "$was" >"$POLL"
fi

# Orderly teardown: the usrbd services detach on SIGTERM.
for s in $SYSTEMS; do
	case $s in usrbd-*) kill -TERM "$(var PID "$s")" ;; esac
done
"$RUBLK" del -a >/dev/null 2>&1 || true
qemu-nbd -d /dev/nbd0 >/dev/null 2>&1 || true
wait
say "done"
