"""Ranking preview: base top-k and reranked top-k side by side for any user."""

import streamlit as st

from dashboard import cached, common, preview
from ranker import config, keys
from ranker.flows import personalised_flows
from ranker.rank import tuning
from ranker.serving import views

st.title("Ranking preview")
engine = common.get_engine_or_stop()
counts = cached.table_counts(engine)
if common.empty_database_notice(counts):
    st.stop()

c1, c2, c3 = st.columns([1, 2, 1])
flow = c1.selectbox("Flow", cached.flows_with_users(engine) or personalised_flows())
users = cached.users_for_flow(engine, flow)
example = cached.example_user(engine)
labels = {int(r.id): f"{r.id} · {r.name} ({r.category or '–'}/{r.field or '–'})" for r in users.itertuples()}
ids = list(labels)
default = ids.index(example[0]) if example and example[0] in labels and example[1] == flow else 0
user_id = c2.selectbox("User (type to search)", ids, index=default, format_func=labels.get)
k = c3.number_input("k", 1, 50, config.DEFAULT_K)

if not preview.ensure_base_models(engine, counts["interactions"]):
    st.stop()
try:
    base = preview.base_list(engine, user_id, flow, k)
    ranked = preview.reranked(engine, user_id, flow, k=k)
except ValueError as exc:
    st.error(str(exc))
    st.stop()

if not ranked.reranked:
    st.info(f"{ranked.fallback_reason}. Trending lists are never reranked.")
who = f"neural ranker **{ranked.model_version}**" if ranked.fallback_reason is None else \
    f"**{ranked.model_version}** ({ranked.fallback_reason})"
st.caption(f"Candidates: {tuning.fetch_multiplier(engine)}×k from the **{ranked.base_model}** base model; "
           f"reranked by {who}.")

left, right = st.columns(2)
for col, title, rec, other in ((left, "Base order", base, None), (right, "Reranked", ranked, base)):
    with col:
        q = views.list_quality(engine, rec)
        st.subheader(title)
        m1, m2 = st.columns(2)
        m1.metric("Diversity (ILD)", common.fmt(q[keys.ILD], ".3f"))
        m2.metric("Mean age (days)", common.fmt(q[keys.MEAN_AGE_DAYS], ".1f"))
        st.dataframe(preview.list_table(engine, rec, other), hide_index=True, width="stretch",
                     key=f"table_{title}", column_config={c: st.column_config.NumberColumn(format="%.4f")
                                                          for c in ("score", "base score")})
with st.expander("Features and score contributions of the reranked list"):
    st.dataframe(preview.list_table(engine, ranked, base, detail=True), hide_index=True, width="stretch")
    st.caption("Features as served: model_score, recency, popularity, diversity. Columns marked ⊕ are each "
               "feature's contribution to the score (weight × feature for the rule; integrated gradients for "
               "the neural model).")

st.subheader("Recent interactions")
recent = views.recent_interactions(engine, user_id)
if recent.empty:
    st.caption("This user has no interactions yet.")
else:
    st.dataframe(recent, hide_index=True, width="stretch")
