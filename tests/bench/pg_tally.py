#!/usr/bin/env python3
"""The PostgreSQL tally triggers' cost, server side, without edm.

Builds the `edm` schema from the migrations in one or more schema.rs files
(this checkout's by default; give others to compare, e.g. a copy of
`git show REV:crates/store/src/postgres/schema.rs`), in a throwaway
PostgreSQL 15 (fsync=off), and times what a run does to the recipients
table: claims of 32 rows (pending -> sending), outcomes of 32 rows in one
statement (sending -> sent), and outcomes one row a statement, with the
statement's Message-ID written apart (a change of no count). Each figure is
the median of REPS runs of N rows, in microseconds per row.

    python3 tests/bench/pg_tally.py
    N=20000 REPS=5 python3 tests/bench/pg_tally.py old_schema.rs crates/store/src/postgres/schema.rs
"""

import glob
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

N = int(os.environ.get("N", "20000"))
REPS = int(os.environ.get("REPS", "3"))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def migrations(path):
    """The SQL of V1, V2, ... in order."""
    text = open(path).read()
    found = dict(re.findall(r'const (V\d+): &str = r#"(.*?)"#;', text, re.S))
    return [found[k] for k in sorted(found, key=lambda k: int(k[1:]))]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    files = sys.argv[1:] or [os.path.join(ROOT, "crates/store/src/postgres/schema.rs")]
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        sys.exit("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb)")
    pg = os.path.dirname(bins[-1])
    tmp = tempfile.mkdtemp(prefix="edm-bench-pgtally.")
    as_pg = []
    if os.getuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = os.path.join(tmp, "data")
    subprocess.run(as_pg + [f"{pg}/initdb", "-D", data, "-U", "postgres", "--auth=trust",
                            "--no-sync"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(as_pg + [f"{pg}/pg_ctl", "-D", data, "-w", "-l", f"{tmp}/log", "-o",
                            f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
                            " -c synchronous_commit=off", "start"],
                   check=True, stdout=subprocess.DEVNULL)

    def psql(db, sql):
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                            "-p", str(port), "-U", "postgres", "-d", db],
                           input=sql, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"psql failed: {r.stderr}")
        return r.stderr + r.stdout

    try:
        rows = {}
        for i, f in enumerate(files):
            psql("postgres", f"CREATE DATABASE b{i}")
            psql(f"b{i}", "CREATE SCHEMA edm;\n" + "\n".join(migrations(f)))
            psql(f"b{i}", "INSERT INTO edm.campaigns (name, fingerprint, created_at) "
                          "VALUES ('c', 'f', 0)")
            rows[f] = {"claim 32": [], "sent 32": [], "sent 1 + message-id": []}
        # The files' runs interleaved: a noisy minute falls on all of them.
        for _ in range(REPS):
            for i, f in enumerate(files):
                out = psql(f"b{i}", WORKLOAD.replace("{N}", str(N)))
                for line in out.splitlines():
                    m = re.search(r"NOTICE:  (.+): ([\d.]+) us/row", line)
                    if m:
                        rows[f][m.group(1)].append(float(m.group(2)))
        results = {f: {k: statistics.median(v) for k, v in r.items()} for f, r in rows.items()}
        print(f"PostgreSQL tally triggers, {N} rows, medians of {REPS} (us per row):")
        for f, r in results.items():
            print(f"  {f}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
    finally:
        subprocess.run(as_pg + [f"{pg}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)


# One pass: N fresh pending rows over 50 domains; then claims of 32, sent
# outcomes of 32 in one statement, then (on fresh rows) one outcome a
# statement plus its Message-ID, as the batched and the lone paths write.
# Each batch commits, as edm's transactions do (in one transaction the tally
# rows' versions pile up and every update walks them).
WORKLOAD = r"""
DELETE FROM edm.recipients;
DELETE FROM edm.tally;
DELETE FROM edm.domain_tally;
INSERT INTO edm.recipients (campaign_id, generation, updated_at, line, email, email_norm, domain,
                            fields, status)
SELECT 1, 1, 0, g, 'r' || g || '@d' || (g % 50) || '.example', 'r' || g || '@d' || (g % 50)
       || '.example', 'd' || (g % 50) || '.example', '["x"]', 'pending'
  FROM generate_series(1, {N}) g;
DO $$
DECLARE
    t0 timestamptz;
    lo bigint;
    hi bigint;
    i bigint;
BEGIN
    SELECT min(id), max(id) INTO lo, hi FROM edm.recipients;
    t0 := clock_timestamp();
    i := lo;
    WHILE i <= hi LOOP
        UPDATE edm.recipients SET status = 'sending' WHERE id BETWEEN i AND i + 31;
        COMMIT;
        i := i + 32;
    END LOOP;
    RAISE NOTICE 'claim 32: % us/row',
        round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / {N}, 2);
    t0 := clock_timestamp();
    i := lo;
    WHILE i <= hi LOOP
        UPDATE edm.recipients SET status = 'sent', message_id = '<' || id || '@t>'
         WHERE id BETWEEN i AND i + 31;
        COMMIT;
        i := i + 32;
    END LOOP;
    RAISE NOTICE 'sent 32: % us/row',
        round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / {N}, 2);
    UPDATE edm.recipients SET status = 'sending';
    COMMIT;
    t0 := clock_timestamp();
    FOR i IN lo..hi LOOP
        UPDATE edm.recipients SET status = 'sent' WHERE id = i;
        UPDATE edm.recipients SET message_id = '<' || i || '@u>' WHERE id = i;
        COMMIT;
    END LOOP;
    RAISE NOTICE 'sent 1 + message-id: % us/row',
        round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / {N}, 2);
    IF (SELECT sum(n) FROM edm.tally) <> {N} OR (SELECT n FROM edm.tally WHERE status = 'sent') <> {N}
       OR (SELECT sum(n) FROM edm.domain_tally WHERE status = 'sent') <> {N} THEN
        RAISE EXCEPTION 'the tally does not match the rows';
    END IF;
END
$$;
"""

if __name__ == "__main__":
    main()
