#!/bin/sh
# Best-effort system packages for the tests that drive real engines: a one-node Slurm cluster
# (slurm-wlm, munge), a real browser for the status page (chromium), libfuse for the lazy
# FUSE view (--mount) and, for `make bench`'s
# comparison, rclone. Idempotent, quiet, and
# never fails the build: those tests skip, naming what is missing, when this did not work.
[ "$(id -u)" = 0 ] || exit 0
command -v apt-get >/dev/null 2>&1 || exit 0
need=""
command -v slurmctld >/dev/null 2>&1 || need="$need slurm-wlm"
command -v munged >/dev/null 2>&1 || need="$need munge"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v rclone >/dev/null 2>&1 || need="$need rclone"  # benchmarks only (make bench)
# `jitrender run --mount` (fusepy loads libfuse 2; fuse3 brings fusermount)
ldconfig -p 2>/dev/null | grep -q 'libfuse.so.2' || need="$need libfuse2 fuse3"
[ -n "$need" ] || exit 0
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $need; } >/dev/null 2>&1 \
    || echo "ci-system-deps: could not install$need; the tests that need them will skip" >&2
exit 0
