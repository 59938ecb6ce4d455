#!/bin/sh
# append-cpu-read.sh PID FILE: one backend's CPU so far, written to FILE as
# "<ns on CPU from /proc/PID/schedstat> <utime+stime ticks from /proc/PID/stat>".
# Called by the pgbench scripts of append-cpu.sh through \shell, before the first and after
# the last measured transaction.
set -e
ns=$(cut -d' ' -f1 /proc/$1/schedstat)
ticks=$(sed 's/^.*) //' /proc/$1/stat | awk '{print $12 + $13}')
echo "$ns $ticks" > "$2"
