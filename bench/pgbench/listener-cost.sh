#!/bin/bash
# What an idle LISTEN costs a pipeline that notifies on its own (docs/performance.md,
# "Footprint"; migration 0012): PostgreSQL signals every backend that listens in a database at
# the commit of every transaction there that sent a NOTIFY, whatever the channel. One scratch
# database, rl_listener_cost: a table of 40,000 rows with a per-row NOTIFY trigger on
# 'pipeline_changes' (a pipeline whose workers listen for their rows' changes), and a heartbeat UPDATE of a random row as the
# pgbench script. Rounds alternate without and with an idle session that LISTENs on another
# channel (what the watchdog did until 0012); PIPELINE_LISTENER=1 keeps a session listening on
# 'pipeline_changes' throughout (the pipeline's own workers). Prints round, side, tps.
#   The server is postgres@127.0.0.1:5432. ROUNDS (3), SECONDS_PER (7), CLIENTS (4).
U=postgres://postgres@127.0.0.1:5432
DB=rl_listener_cost
ROUNDS=${ROUNDS:-3}
SECONDS_PER=${SECONDS_PER:-7}
CLIENTS=${CLIENTS:-4}
SCRIPT=$(mktemp)
trap 'rm -f "$SCRIPT"; kill $(jobs -p) 2>/dev/null' EXIT
psql $U/postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
psql $U/$DB -q <<'SQL'
CREATE TABLE t (id int PRIMARY KEY, updated_at timestamptz);
INSERT INTO t SELECT g, now() FROM generate_series(1, 40000) g;
CREATE FUNCTION pipeline_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pipeline_changes', NEW.id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER t_notify AFTER UPDATE ON t FOR EACH ROW EXECUTE FUNCTION pipeline_notify();
VACUUM ANALYZE t;
SQL
cat > "$SCRIPT" <<'PGB'
\set id random(1, 40000)
UPDATE t SET updated_at = now() WHERE id = :id;
PGB
# An idle session that listens on $1 for $2 seconds: psql waits on its stdin meanwhile.
listen_idle() { (echo "LISTEN $1;"; sleep "$2") | psql -X -q $U/$DB >/dev/null; }
if [ "${PIPELINE_LISTENER:-0}" = 1 ]; then
  listen_idle pipeline_changes $(( ROUNDS * 2 * (SECONDS_PER + 3) + 10 )) &
  sleep 0.5
fi
echo "round side tps"
for round in $(seq "$ROUNDS"); do
  for side in without with; do
    if [ $side = with ]; then
      listen_idle another_channel $(( SECONDS_PER + 2 )) &
      LISTENER=$!
      sleep 0.5
    fi
    tps=$(pgbench -n -c "$CLIENTS" -j 2 -T "$SECONDS_PER" -f "$SCRIPT" $U/$DB 2>/dev/null \
          | awk '/^tps =/ {print $3}')
    echo "$round $side $tps"
    [ $side = with ] && wait $LISTENER
  done
done
psql $U/postgres -qc "DROP DATABASE $DB WITH (FORCE)"
