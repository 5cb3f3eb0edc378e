"""Overview: what is serving, what data there is, and how the experiment is doing."""

import pandas as pd
import streamlit as st

from dashboard import common
from ranker import db, online
from ranker.serve import service

st.title("Overview")
engine = common.get_engine_or_stop()
url = common.database_label(engine)
counts = common.table_counts(engine, url)
st.caption(f"Database: `{url}`")
if common.empty_database_notice(counts):
    st.stop()

# --- Which ranker is serving --------------------------------------------------------
svc = service(engine)
scorer, reason = svc.scorer()

if reason is None:
    st.success(f"Serving the neural ranker **{scorer.version}**.")
else:
    st.warning(f"Serving the **rule-based ranker** (weights {svc.rule_scorer().weights}). Why: {reason}. "
               "Train a model on the **Data & Training** page.")

# --- Data ---------------------------------------------------------------------------
st.subheader("Data")
cols = st.columns(5)
for col, name in zip(cols, ("users", "items", "interactions", "impressions", "outcomes")):
    col.metric(name.capitalize(), f"{counts[name]:,}")

with db.session_scope(engine) as s:
    last_dataset = db.get_setting(s, "last_dataset")
    last_training = db.get_setting(s, "last_training")
left, right = st.columns(2)
with left:
    st.markdown("**Last dataset**")
    if last_dataset:
        st.write(f"{last_dataset['rows']:,} rows, {last_dataset['positives']:,} positives, "
                 f"source {last_dataset['source']}, built {last_dataset['created_at'][:19]} → "
                 f"`{last_dataset['path']}`")
    else:
        st.write("None yet.")
with right:
    st.markdown("**Last training run**")
    if last_training:
        m = last_training["metrics"]
        st.write(f"{last_training['version']} at {last_training['at'][:19]}: NDCG@10 "
                 f"{common.fmt(m['model']['ndcg@10'])} (rule {common.fmt(m['rule']['ndcg@10'])}, "
                 f"base {common.fmt(m['base']['ndcg@10'])})")
    else:
        st.write("None yet.")

# --- Headline metrics ---------------------------------------------------------------
st.subheader("Treatment vs control")
arms = online.summary_by_arm(engine)
if arms.empty:
    st.info("No served traffic yet. Run simulated traffic on the **Metrics & A/B** page "
            "(or `ranker simulate`).")
else:
    cols = st.columns(3)
    for col, (label, metric, spec) in zip(cols, [("CTR", "ctr", ".2%"), ("Diversity (ILD)", "ild", ".3f"),
                                                 ("Mean age of served items (days)", "mean_age_days", ".1f")]):
        t = arms[metric].get("treatment")
        c = arms[metric].get("control")
        delta = None if t is None or c is None else format(t - c, "+" + spec)
        col.metric(f"{label}: treatment", common.fmt(t, spec), delta=delta,
                   delta_color="inverse" if metric == "mean_age_days" else "normal",
                   help=f"control: {common.fmt(c, spec)}")

# --- Latency ------------------------------------------------------------------------
st.subheader("Rerank latency")
lat = svc.rerank_latency()
c1, c2 = st.columns(2)
c1.metric("p50 (ms, 20 → 10)", common.fmt(lat["p50_ms"], ".3f"))
c2.metric("p99 (ms, 20 → 10)", common.fmt(lat["p99_ms"], ".3f"))

# --- Audit log ----------------------------------------------------------------------
st.subheader("Audit log")
rows = [{"at": a.at, "actor": a.actor, "action": a.action, "details": str(a.details)}
        for a in db.recent_audit(engine, limit=25)]
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

