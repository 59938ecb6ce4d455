#!/bin/bash
# What the order of event ids does to an append on a large log (docs/scale.md, "Event ids in
# time order"): on a database `retrylog-bench scale --keep` left, appends at 16 clients with
# the event id a random UUID (what record_retry generated before) and with a time-ordered one
# (version 7, as retrylog_event_id() generates now), alternating. Both pass the id as the
# caller's, so the two differ in nothing but where the id lands in retry_event_id's key. Each
# run starts right after a CHECKPOINT and reports appends/s, and the WAL bytes and full-page
# images per append; under each wal_compression of COMPRESSION in turn (it compresses those
# images), reset to the server's own setting at the end.
#   SCALE_DB (retrylog_bench), ROUNDS (2), RUN_SECONDS (45), COMPRESSION ("off").
. "$(dirname "$0")/kept-log.sh"

append_script ", event_id => gen_random_uuid()" > "$WORK/random.pgb"
# retrylog_event_id()'s expression (sql/record_retry.sql), written out so that the script
# runs on a database migrated before it existed.
append_script ", event_id => encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid" \
    > "$WORK/ordered.pgb"

compression() {
    psql $U/postgres -qAtc "ALTER SYSTEM $1" -c "SELECT pg_reload_conf()" >/dev/null
}
at_exit() { compression "RESET wal_compression"; }

echo "wal_compression event_ids appends/s wal_bytes/append full_pages/append"
for setting in ${COMPRESSION:-off}; do
    compression "SET wal_compression = '$setting'"
    for _ in $(seq "${ROUNDS:-2}"); do
        for kind in random ordered; do
            echo "$setting $kind $(appends_after_checkpoint "$WORK/$kind.pgb")"
        done
    done
done
