#!/usr/bin/env python3
"""What each move of a run's sent Message-IDs into the store's lookup table
costs as the table grows (schema 8: `message_ids`, the whole Message-ID as
key; schema 9: `message_keys`, its first 16 characters). Inserts TOTAL ids
shaped as edm makes them (32 hex of a hash, then `.campaign@domain`) in
sorted batches of BATCH, each batch one transaction as in
`Store::index_message_ids`, on a WAL SQLite file with edm's page cache, and
prints the time of every tenth pass and the total.

    python3 tests/bench/mid_passes.py            # both schemas, 1M ids, 20k a pass
    TOTAL=200000 python3 tests/bench/mid_passes.py

The times include Python's own per-row cost (~50 ms a pass at 20k); the
growth from pass to pass is SQLite's, pages rewritten.
"""
import hashlib
import os
import sqlite3
import tempfile
import time

TOTAL = int(os.environ.get("TOTAL", "1000000"))
BATCH = int(os.environ.get("BATCH", "20000"))

SCHEMAS = {
    "schema 8 (message_ids, whole Message-ID)": (
        "CREATE TABLE t (message_id TEXT NOT NULL, id INTEGER NOT NULL,"
        " PRIMARY KEY (message_id, id)) WITHOUT ROWID",
        lambda mid: mid,
    ),
    "schema 9 (message_keys, first 16 characters)": (
        "CREATE TABLE t (k TEXT NOT NULL, id INTEGER NOT NULL,"
        " PRIMARY KEY (k, id)) WITHOUT ROWID",
        lambda mid: mid[:16],
    ),
}


def run(name, create, key, db):
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-16384")
    conn.execute(create)
    total, n = 0.0, 0
    print(f"== {name}")
    for k in range(TOTAL // BATCH):
        rows = sorted(
            (key(hashlib.sha256(str(i).encode()).hexdigest()[:32] + ".bench@sender.example.com"), i)
            for i in range(n, n + BATCH)
        )
        n += BATCH
        t = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR IGNORE INTO t VALUES (?, ?)", rows)
        conn.execute("COMMIT")
        dt = time.time() - t
        total += dt
        if k == 0 or k % 10 == 9:
            print(f"   pass {k + 1}: {n} ids, {dt * 1000:.0f} ms")
    print(f"   total {total:.1f} s for {n} ids")
    conn.close()
    return total


with tempfile.TemporaryDirectory() as d:
    totals = [run(name, c, key, os.path.join(d, f"{i}.db")) for i, (name, (c, key)) in enumerate(SCHEMAS.items())]
print(f"== result: schema 9 / schema 8 = {totals[1] / totals[0]:.2f}")
