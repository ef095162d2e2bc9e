"""The release phase: 'migrates' a SQLite database (fails when MIGRATION_FAILS is set)."""

import os
import sqlite3
import sys

db = sqlite3.connect(os.path.join(os.environ.get("TMPDIR", "/tmp"), "app.db"))
db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT)")
db.execute("INSERT INTO migrations VALUES ('0001_initial')")
db.commit()
print(f"applied 0001_initial for schema {os.environ.get('SCHEMA')}", flush=True)
if os.environ.get("MIGRATION_FAILS"):
    print("migration 0002 failed: column already exists", flush=True)
    sys.exit(2)
