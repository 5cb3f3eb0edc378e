"""Rule weights: tune the fallback's weights with a live preview of the effect, the neural
ranker's freshness boost and the diversity method."""

import streamlit as st

from dashboard import cached, common, preview
from ranker import config
from ranker.rank import tuning
from ranker.rank.diversity import KNOB_NAMES, METHODS, Diversity, default_knob
from ranker.rank.features import feature_names
from ranker.rank.rerank import MAX_FRESHNESS_BOOST, RuleScorer

st.title("Rule weights")
engine = common.get_engine_or_stop()
counts = cached.table_counts(engine)
if common.empty_database_notice(counts):
    st.stop()
can_edit = common.operator_gate()
tuning.feature_set(engine)  # a weight per feature of the operator's feature set, as serving computes it
saved = tuning.current_weights(engine)
defaults = ", ".join(f"{k} {v:g}" for k, v in config.DEFAULT_RULE_WEIGHTS.items())
st.caption("The rule-based ranker scores each candidate as Σ weight × feature. It serves whenever no trained "
           f"model is active. Defaults: {defaults}.")
common.show_done()

if st.session_state.pop("reset_weights", False):
    for name in feature_names():
        st.session_state[f"w_{name}"] = float(config.DEFAULT_RULE_WEIGHTS.get(name, 0.0))

weights = {}
cols = st.columns(len(feature_names()))
for col, name in zip(cols, feature_names()):
    weights[name] = col.slider(name, 0.0, 1.0, float(saved.get(name, 0.0)), 0.05, key=f"w_{name}")
st.caption("All weights zero serves the base order unchanged: every candidate scores 0 and ties keep the base order.")

c1, c2, _ = st.columns([1, 1, 4])
if c1.button("Save", type="primary", disabled=not can_edit or weights == saved) and can_edit:
    tuning.save_weights(engine, weights, actor=common.ACTOR)
    common.done("Saved. Serving uses these weights from the next request.")
if c2.button("Reset to defaults", disabled=not can_edit):
    st.session_state["reset_weights"] = True
    st.rerun()

st.subheader("Preview")
held = cached.held_out()
if held is None:
    st.info("Offline NDCG needs held-out data: generate a dataset on the **Data & Training** page.")
else:
    data = held.data
    ndcg_new, ndcg_saved = tuning.offline_ndcg(weights, data), tuning.offline_ndcg(saved, data)
    tau = tuning.rank_correlation(saved, weights, data)
    m1, m2 = st.columns(2)
    m1.metric("Offline NDCG@10 (these weights)", f"{ndcg_new:.4f}",
              delta=f"{ndcg_new - ndcg_saved:+.4f} vs saved" if weights != saved else None)
    m2.metric("Rank correlation with saved weights (Kendall τ)", f"{tau:.3f}")
    st.caption(f"On {len(data):,} held-out rows in {held.lists:,} lists from `{held.path}`.")

example = cached.example_user(engine)
if example is not None and preview.ensure_base_models(engine, counts["interactions"]):
    user_id, flow = example
    before = preview.reranked(engine, user_id, flow, RuleScorer(saved))
    after = preview.reranked(engine, user_id, flow, RuleScorer(weights))
    st.markdown(f"**Example: user {user_id}, flow `{flow}`** (saved weights → these weights)")
    st.dataframe(preview.comparison_table(engine, before, after, "saved", "these weights"),
                 hide_index=True, width="stretch")

st.subheader("Neural ranker: freshness boost")
st.caption("A ranker trained on clicks serves what gets clicked, and that can be older than the base order "
           "(the README's quality section measures it). The boost adds boost × recency to the neural ranker's "
           "score: a brand-new item gains the boost, a 30-day-old one 0.37 × boost. It trades some CTR for "
           "fresher lists; 0 turns it off. Watch the freshness and CTR verdicts on **Metrics & A/B**.")
boost_saved = tuning.freshness_boost(engine)
boost = st.number_input("Freshness boost (logit units)", 0.0, MAX_FRESHNESS_BOOST, boost_saved, 0.25,
                        key="freshness_boost")
if st.button("Save boost", disabled=not can_edit or boost == boost_saved) and can_edit:
    tuning.save_freshness_boost(engine, boost, actor=common.ACTOR)
    common.done(f"Saved. The neural ranker serves with freshness boost {boost:g} from the next request.")

st.subheader("Diversity method")
st.caption("How the treatment arm's lists are diversified. **greedy** (the default) is the guide's: the scorer "
           "weighs each candidate's diversity against the items placed above (its strength is the diversity "
           "weight above, or the model's). **mmr** places the candidate with the best λ × relevance − (1 − λ) × "
           "similarity to the items placed; **dpp** picks the most relevant yet least similar set (greedy MAP of a "
           "determinantal point process). Lower knobs give more diverse lists and, past a point, fewer clicks: "
           "compare them on **Metrics & A/B**.")
div_saved = tuning.diversity(engine)
method = st.selectbox("Method", METHODS, index=METHODS.index(div_saved.method), key="diversity_method",
                      format_func={"greedy": "greedy (the guide's penalty)", "mmr": "mmr (maximal marginal relevance)",
                                   "dpp": "dpp (determinantal point process)"}.get)
knob = None
if method != "greedy":
    start = div_saved.knob if div_saved.method == method else default_knob(method)
    knob = round(st.slider(f"Trade-off {KNOB_NAMES[method]} (lower is more diverse)", 0.0,
                           1.0 if method == "mmr" else 0.99, float(start), 0.01, key=f"knob_{method}"), 2)
chosen = Diversity(method, knob)
if st.button("Save diversity method", disabled=not can_edit or chosen == div_saved) and can_edit:
    tuning.save_diversity(engine, method, knob, actor=common.ACTOR)
    common.done(f"Saved. Serving reranks with {chosen.label} from the next request.")

st.subheader("Candidates per slot")
st.caption("How many candidates the base model proposes for each served slot: the ranker reorders "
           "M × k of them and serves the top k. The guide uses 2. More candidates give the ranker more to "
           "choose from, and reach deeper into the base model's order; 1 serves the base model's top k, reordered.")
fetch_saved = tuning.fetch_multiplier(engine)
fetch = st.number_input("Candidates per slot (M)", 1, config.MAX_FETCH_MULTIPLIER, fetch_saved, 1,
                        key="fetch_multiplier")
if st.button("Save candidates per slot", disabled=not can_edit or fetch == fetch_saved) and can_edit:
    tuning.save_fetch_multiplier(engine, int(fetch), actor=common.ACTOR)
    common.done(f"Saved. The base model proposes {int(fetch)} × k candidates from the next request.")
