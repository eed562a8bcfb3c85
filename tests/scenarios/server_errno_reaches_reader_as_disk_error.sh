#!/bin/sh
# Proves: a server's errno reaches the reader through a whitelist: ENOSPC,
# EDQUOT (as ENOSPC), EOPNOTSUPP, ETIMEDOUT, ENODATA and EBADMSG (as
# ENODATA) pass, anything else is EIO. Before, errno_to_blk_status() made
# -EAGAIN an EAGAIN (a REQ_NOWAIT retry code on a blocking read) and
# -ENOLINK a multipath transport error (ENOLINK).
# group: main
# timeout: 120
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
check "vmkit errno" "$VMKIT" errno
