"""The xlarge world's hot queries under EXPLAIN ANALYZE on PostgreSQL: median execution time and plan.

    python bench/xlarge_queries.py [DB_URL] [OUT.json]

Per-user queries run 30 times over sampled users, the others 3 times. The queries are written as
the code issues them (serving's retrieval and known-user check, the dashboard's, the dataset
builder's). Docs: scaling.md, "Indexes". Not a test: nothing is asserted.
"""
# ruff: noqa: E501
import json
import statistics
import sys

from sqlalchemy import create_engine, text

url = sys.argv[1] if len(sys.argv) > 1 else "postgresql+psycopg://postgres@127.0.0.1:5432/ranker_xlarge"
e = create_engine(url)
Q = {
 "serving: a user's history": ("SELECT item_id, kind, created_at FROM interactions WHERE user_id = :u AND created_at < :t", True),
 "serving: has history (known user)": ("SELECT id FROM interactions WHERE user_id = :u AND created_at < :t AND kind IN ('click','like','apply','interest','favorite') LIMIT 1", True),
 "serving: popularity window (7 days, organic)": ("SELECT item_id, kind FROM interactions WHERE created_at >= CAST(:t AS timestamp) - interval '7 days' AND created_at < :t AND origin = 'organic'", False),
 "dashboard: a user's recent interactions": ("SELECT i.created_at, i.kind, it.name FROM interactions i JOIN items it ON it.id = i.item_id WHERE i.user_id = :u ORDER BY i.created_at DESC LIMIT 15", True),
 "dashboard: recently active user": ("SELECT u.id FROM users u JOIN (SELECT user_id FROM interactions WHERE kind IN ('click','like','apply','interest','favorite') ORDER BY created_at DESC LIMIT 2000) r ON r.user_id = u.id GROUP BY u.id ORDER BY count(*) DESC, u.id LIMIT 1", False),
 "dataset: impressions of a 7-day window": ("SELECT id, request_id, user_id, item_id, position, served_at FROM impressions WHERE served_at >= CAST(:t AS timestamp) - interval '7 days' AND served_at < :t AND model_version != 'trending' ORDER BY served_at, request_id, position", False),
 "dataset: outcomes of a 7-day window": ("SELECT o.impression_id, o.kind FROM outcomes o JOIN impressions i ON i.id = o.impression_id WHERE i.served_at >= CAST(:t AS timestamp) - interval '7 days' AND i.served_at < :t AND i.model_version != 'trending'", False),
 "dataset: served span (first ranker impression)": ("SELECT served_at FROM impressions WHERE model_version NOT IN ('legacy', 'trending') ORDER BY served_at LIMIT 1", False),
 "dashboard: impressions by user (both arms)": ("SELECT user_id FROM impressions WHERE served_at >= CAST(:t AS timestamp) - interval '7 days' AND served_at < :t GROUP BY user_id HAVING count(DISTINCT arm) > 1", False),
 "a user's impressions": ("SELECT item_id, served_at FROM impressions WHERE user_id = :u AND served_at < :t", True),
}
T = "2026-01-01"
with e.connect() as c:
    users = [r[0] for r in c.execute(text("SELECT user_id FROM interactions TABLESAMPLE SYSTEM (0.1) LIMIT 200"))]
    out = {}
    for name, (sql, per_user) in Q.items():
        times, plan = [], None
        for n in range(30 if per_user else 3):
            params = {"t": T, "u": users[n % len(users)]}
            rows = c.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql), params).scalar()
            p = rows[0] if isinstance(rows, list) else json.loads(rows)[0]
            times.append(p["Execution Time"])
            plan = plan or p["Plan"]
        def nodes(p):
            s = p["Node Type"] + (f"[{p['Index Name']}]" if "Index Name" in p else "") + (f"({p['Relation Name']})" if "Relation Name" in p and "Index Name" not in p else "")
            kids = [nodes(k) for k in p.get("Plans", [])]
            return s + ("<" + ", ".join(kids) + ">" if kids else "")
        out[name] = {"median_ms": statistics.median(times), "plan": nodes(plan)}
        print(f"{name}: {statistics.median(times):.2f} ms  {nodes(plan)}", flush=True)
if len(sys.argv) > 2:
    with open(sys.argv[2], "w") as f:
        json.dump(out, f, indent=1)
