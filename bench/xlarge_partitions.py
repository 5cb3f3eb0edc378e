"""Day partitioning of the interactions, measured: a partitioned copy against the plain table.

    python bench/xlarge_partitions.py [DB_URL]

Copies ``interactions`` into ``interactions_by_day`` (one partition per day, the same indexes,
ANALYZE), times a day's count, a 7-day window and a user's history on both (medians), then
drops the copy. Docs: scaling.md, "Day partitioning". Not a test: nothing is asserted.
"""
# ruff: noqa: E501
import statistics
import sys
import time
from datetime import timedelta

from sqlalchemy import create_engine, text

url = sys.argv[1] if len(sys.argv) > 1 else "postgresql+psycopg://postgres@127.0.0.1:5432/ranker_xlarge"
e = create_engine(url, isolation_level="AUTOCOMMIT")
with e.connect() as c:
    c.execute(text("DROP TABLE IF EXISTS interactions_by_day"))
    t = time.perf_counter()
    c.execute(text("CREATE TABLE interactions_by_day (LIKE interactions INCLUDING DEFAULTS) PARTITION BY RANGE (created_at)"))
    lo, hi = c.execute(text("SELECT min(created_at)::date, max(created_at)::date FROM interactions")).one()
    d = lo
    while d <= hi:
        c.execute(text(f"CREATE TABLE interactions_d{d:%Y%m%d} PARTITION OF interactions_by_day FOR VALUES FROM ('{d}') TO ('{d + timedelta(days=1)}')"))
        d += timedelta(days=1)
    c.execute(text("INSERT INTO interactions_by_day SELECT * FROM interactions"))
    for cols in ("user_id, created_at", "item_id, created_at", "created_at", "item_id, kind, created_at"):
        c.execute(text(f"CREATE INDEX ON interactions_by_day ({cols})"))
    c.execute(text("ANALYZE interactions_by_day"))
    print("partitions", (hi - lo).days + 1, "copy+index s", round(time.perf_counter() - t, 1), flush=True)
    users = [r[0] for r in c.execute(text("SELECT user_id FROM interactions TABLESAMPLE SYSTEM (0.1) LIMIT 100"))]
    Q = {
        "one day's interactions (count)": ("SELECT count(*) FROM {t} WHERE created_at >= '2025-12-20' AND created_at < '2025-12-21'", False),
        "7-day window, organic (popularity)": ("SELECT item_id, kind FROM {t} WHERE created_at >= '2025-12-25' AND created_at < '2026-01-01' AND origin = 'organic'", False),
        "a user's history (serving)": ("SELECT item_id, kind, created_at FROM {t} WHERE user_id = :u AND created_at < '2026-01-01'", True),
    }
    for name, (sql, per_user) in Q.items():
        for table in ("interactions", "interactions_by_day"):
            times = []
            for n in range(60 if per_user else 5):
                t = time.perf_counter()
                c.execute(text(sql.format(t=table)), {"u": users[n % len(users)]}).all()
                times.append((time.perf_counter() - t) * 1e3)
            print(f"{name} | {table} | median {statistics.median(times):.2f} ms", flush=True)
    c.execute(text("DROP TABLE interactions_by_day"))
