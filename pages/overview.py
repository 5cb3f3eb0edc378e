"""Overview: what is serving, what data there is, and how the experiment is doing."""

import json

import pandas as pd
import streamlit as st

from dashboard import cached, common
from ranker import keys
from ranker.data import db
from ranker.rank.rerank import BaseOrderScorer, FreshnessBoosted
from ranker.serving import views
from ranker.serving.service import service

st.title("Overview")
engine = common.get_engine_or_stop()
url = common.database_label(engine)
counts = cached.table_counts(engine)
st.caption(f"Database: `{url}`")
if common.empty_database_notice(counts):
    st.stop()

# --- Which ranker is serving --------------------------------------------------------
svc = service(engine)
scorer, reason = svc.scorer()

if isinstance(scorer, BaseOrderScorer):
    why = reason.removeprefix("serving the base order: ")
    st.error(f"The treatment arm serves the **base order** (do no harm): {why}. "
             "A model that passes `ranker retrain`'s gate, or one activated on the Models page, ends this.")
elif reason is None and isinstance(scorer, FreshnessBoosted):
    st.success(f"Serving the neural ranker **{scorer.inner.version}** with a freshness boost of "
               f"{scorer.boost:g} (Rule weights page).")
elif reason is None:
    st.success(f"Serving the neural ranker **{scorer.version}**.")
else:
    weights = ", ".join(f"{k} {v:g}" for k, v in svc.rule_scorer().weights.items())
    st.warning(f"Serving the **rule-based ranker** (weights {weights}). Why: {reason}. "
               "Train a model to serve the neural ranker.")
    common.link("data_training", "Train a model on Data & Training")

# --- HTTP API -----------------------------------------------------------------------
st.subheader("HTTP API")
api = cached.api_server(engine)
if api is None:
    st.caption("No API server running. Start one with `ranker serve` (see docs/api.md).")
else:
    workers = f"{api['workers']} worker{'s' if api['workers'] != 1 else ''}"
    st.markdown(f"[{api['url']}]({api['url']}/docs) · {workers} · started "
                f"{api['started_at'][:19].replace('T', ' ')} UTC · **{common.api_status(api['ready'])}**")

# --- Data ---------------------------------------------------------------------------
st.subheader("Data")
cols = st.columns(5)
origins = cached.interaction_origins(engine)
origin_help = (f"{origins['organic']:,} organic (found by the users themselves, imported), "
               f"{origins['impression']:,} outcomes of served lists; popularity counts the organic ones")
for col, name in zip(cols, ("users", "items", "interactions", "impressions", "outcomes")):
    col.metric(name.capitalize(), f"{counts[name]:,}", help=origin_help if name == "interactions" else None)

latest = views.latest_runs(engine)
last_dataset, last_training = latest.dataset, latest.training
left, right = st.columns(2)
with left:
    st.markdown("**Last dataset**")
    if last_dataset:
        st.write(f"{last_dataset['rows']:,} training + {last_dataset.get('val_rows', 0):,} validation rows "
                 f"({last_dataset['positives'] + last_dataset.get('val_positives', 0):,} positives in all), "
                 f"source {last_dataset['source']}, "
                 f"built {last_dataset['created_at'][:19].replace('T', ' ')} → `{last_dataset['path']}`")
    else:
        st.write("None yet.")
with right:
    st.markdown("**Last training run**")
    if last_training:
        m = last_training["metrics"]
        st.write(f"{last_training['version']} at {last_training['at'][:19].replace('T', ' ')}: NDCG@10 "
                 f"{common.fmt(m['model'][keys.NDCG_AT_10])} (rule {common.fmt(m['rule'][keys.NDCG_AT_10])}, "
                 f"base {common.fmt(m['base'][keys.NDCG_AT_10])})")
    else:
        st.write("None yet.")

# --- Headline metrics ---------------------------------------------------------------
st.subheader("Treatment vs control")
arms = cached.summary_by_arm(engine)
if arms.empty:
    st.info("No served traffic yet. Run simulated traffic on the **Metrics & A/B** page "
            "(or `ranker simulate`).")
    common.link("metrics_ab", "Run simulated traffic on Metrics & A/B")
else:
    headline = [("CTR", keys.CTR, ".2%", lambda d: f"{d * 100:+.2f} pp vs control"),
                ("Diversity (ILD)", keys.ILD, ".3f", lambda d: f"{d:+.3f} vs control"),
                ("Mean age of served items (days)", keys.MEAN_AGE_DAYS, ".1f", lambda d: f"{d:+.1f} days vs control")]
    for col, (label, metric, spec, delta) in zip(st.columns(3), headline):
        t, c = arms[metric].get("treatment"), arms[metric].get("control")
        col.metric(f"{label}: treatment", common.fmt(t, spec), delta=None if t is None or c is None else delta(t - c),
                   delta_color="inverse" if metric == keys.MEAN_AGE_DAYS else "normal",  # fresher is better
                   help=f"control: {common.fmt(c, spec)}")

# --- Latency ------------------------------------------------------------------------
st.subheader("Rerank latency")
lat = cached.rerank_latency(engine, scorer.version)
c1, c2 = st.columns(2)
c1.metric("p50 (ms, 20 → 10)", common.fmt(lat["p50_ms"], ".3f"))
c2.metric("p99 (ms, 20 → 10)", common.fmt(lat["p99_ms"], ".3f"))

# --- Audit log ----------------------------------------------------------------------
st.subheader("Audit log")
rows = [{"at": a.at, "actor": a.actor, "action": a.action, "details": json.dumps(a.details, default=str)}
        for a in db.recent_audit(engine, limit=25)]
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption("The 25 latest changes: who made them, and what they were.")
else:
    st.caption("No changes recorded yet.")

