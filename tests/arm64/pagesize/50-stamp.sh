# Every 4 KiB block stamped with direct I/O, then read back in order and at
# random for 20 s from 4 threads in 64 KiB reads: each block is its own.
/bin/vmkit-aarch64 stamp write --dev "$DEV" || fail "vmkit stamp write failed"
/bin/vmkit-aarch64 stamp check --dev "$DEV" --all || fail "vmkit stamp check --all failed"
/bin/vmkit-aarch64 stamp check --dev "$DEV" --seconds 20 --threads 4 --bs 65536 ||
	fail "vmkit stamp check failed"
