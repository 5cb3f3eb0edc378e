"""Metrics & A/B: CTR, diversity and freshness per arm over time, the verdict, rollout, simulation."""

from datetime import timedelta

import streamlit as st

from dashboard import cached, charts, common, jobs_ui
from ranker import config, keys
from ranker.ops import jobs
from ranker.rank import tuning
from ranker.serving import experiments, online
from ranker.serving.service import service
from ranker.sim import runs

st.title("Metrics & A/B")
engine = common.get_engine_or_stop()
if common.empty_database_notice(cached.table_counts(engine)):
    st.stop()
can_edit = common.operator_gate()
scope = cached.traffic_scope(engine)  # None without served traffic
common.show_done()

# --- Experiments ------------------------------------------------------------------
exp = experiments.get_experiment(engine)
records = cached.experiments(engine)
title = f"Experiment {exp.name!r}: running, {exp.rollout:g}% in treatment" if exp.running else \
    "No experiment running: everyone gets the ranker"
with st.expander(title, expanded=not records):
    if exp.running:
        rollout = st.slider("Rollout: % of users in treatment (reranked)", 0, 100, int(exp.rollout), 5,
                            help="Users whose arm changes are then in both arms; analysis leaves them out")
        c1, c2 = st.columns(2)
        if c1.button("Save rollout", disabled=not can_edit or rollout == exp.rollout) and can_edit:
            experiments.update_experiment(engine, rollout=rollout, actor=common.ACTOR)
            common.done(f"Rollout saved: {rollout}% of users get the reranked list.")
        if c2.button("Stop experiment", disabled=not can_edit,
                     help="Everyone gets the ranker; the experiment stays listed for analysis") and can_edit:
            experiments.update_experiment(engine, running=False, actor=common.ACTOR)
            common.done(f"Experiment {exp.name!r} stopped: everyone gets the ranker.")
    else:
        c1, c2 = st.columns(2)
        name = c1.text_input("Name", placeholder=f"experiment-{len(records) + 1}", max_chars=80)
        rollout = c2.slider("Rollout: % of users in treatment (reranked)", 0, 100, int(exp.rollout), 5)
        if st.button("Start experiment", disabled=not can_edit) and can_edit:
            try:
                started = experiments.start_experiment(engine, name or None, rollout, owner=common.ACTOR)
            except ValueError as exc:
                st.error(str(exc))
            else:
                common.done(f"Experiment {started.name!r} started: {rollout}% of users get the ranker.")
    if records:
        st.dataframe(records, hide_index=True)

# --- Simulated traffic --------------------------------------------------------------
served_by_ranker = scope is not None and bool(set(scope.sources) - {config.LEGACY})
with st.expander("Run simulated traffic on the demo world", expanded=not served_by_ranker):
    c1, c2, c3 = st.columns(3)
    days = c1.number_input("Days", 1, 60, 3)
    per_day = c2.number_input("Requests per day", 10, 20000, 300, 50)
    seed = c3.number_input("Seed", 0, 10**6, 0)
    params = {"days": int(days), "requests_per_day": int(per_day), "seed": int(seed)}
    left = runs.unfinished_run(engine)
    if left is not None and not left.alive:
        st.warning(f"The {left.summary()}, stopped before it finished.")
        choice = st.radio("Unfinished run", ["resume", "discard"], horizontal=True,
                          format_func={"resume": "Resume it with its own settings",
                                       "discard": "Discard its partial day, then run the settings above"}.get)
        params = {"unfinished": choice} if choice == "resume" else {**params, "unfinished": choice}
    if st.button("Run simulation", disabled=not can_edit) and can_edit:
        job, _ = jobs.submit(engine, "simulate", params)
        st.toast(f"Simulation job #{job.id} started")
jobs_ui.job_status(engine, "simulate", can_edit)

# --- Diversity methods --------------------------------------------------------------
st.subheader("Diversity: CTR against intra-list diversity")
requests = config.DEFAULTS.diversity_curve_requests
st.caption(f"The serving scorer reranks the same {requests} simulated requests with the guide's greedy penalty, "
           "MMR (λ) and DPP (θ) at several knob values, and the demo world's hidden click model gives each list "
           "its expected CTR (labels: the knob; lower is more diverse). Choose the method on **Rule weights**. "
           "Computed on demand (a few seconds) and kept for ten minutes.")
if st.button("Compute the curves"):
    st.session_state["diversity_curves"] = True
if st.session_state.get("diversity_curves"):
    try:
        curves = cached.diversity_curves(engine, service(engine).scorer()[0].version, requests)
    except ValueError as exc:
        st.info(str(exc))
    else:
        st.plotly_chart(charts.diversity_curves(curves, tuning.diversity(engine).label), key="chart_diversity")
        st.caption(f"Scorer {curves['scorer']}, {curves['requests'] - curves['skipped_trending']} reranked lists of "
                   f"{curves['k']} ({curves['skipped_trending']} trending requests left out). Mean rerank time per "
                   "list: " + ", ".join(f"{p['label']} {p['rerank_ms']:.2f} ms" for p in curves["points"]
                                        if p["knob"] in (None, config.DEFAULTS.mmr_knob, config.DEFAULTS.dpp_knob)))

# --- Filters ------------------------------------------------------------------------
if scope is None:
    st.info("No served traffic yet. Online metrics need served lists with outcomes: run simulated traffic above "
            "(demo world) or serve real requests over HTTP (`ranker serve`) or through `recommend()`; imported "
            "data sets have no served traffic until then.")
    st.stop()
c1, c2, c3 = st.columns([1, 1, 2])
flow = c1.selectbox("Flow", ["all", *scope.flows])
source = c2.selectbox("Source", ["all", *scope.sources],
                      help="Where the requests came from: api (HTTP), sim (simulator), cli (`ranker recommend`), "
                           "earlier (logged before sources were recorded)")
lo, hi = scope.first_day, scope.last_day
picked = c3.date_input("Dates", (lo, hi), min_value=lo, max_value=hi,
                       key=f"dates-{lo}-{hi}")  # new traffic widens the range shown
start, end = (picked[0], picked[1] + timedelta(days=1)) if len(picked) == 2 else (lo, hi + timedelta(days=1))
flow_f, source_f = (None if flow == "all" else flow), (None if source == "all" else source)
per_day_arm = cached.metrics_by_arm(engine, flow_f, start, end, source_f)
if per_day_arm.empty:
    st.info("No served traffic for these filters.")
    st.stop()

# --- Verdict --------------------------------------------------------------------------
st.subheader("A/B verdict")
c1, c2 = st.columns(2)
names = [r["name"] for r in records]
picked_exp = c1.selectbox("Experiment", names or ["(none started yet)"], disabled=not names,
                          help="The analysis reads only the lists served inside this experiment's window")
which = picked_exp if names else None
mde = c2.select_slider("Minimum detectable lift", [0.01, 0.02, 0.05, 0.1, 0.2], value=0.05,
                       format_func=lambda v: f"{v:.0%}")
res = cached.ab_test(engine, flow_f, start, end, mde, source_f, which)
(st.success if res.enough_data and res.p_value is not None and res.p_value < 0.05 else st.info)(res.verdict)
if res.enough_data:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("CTR control", f"{res.control.rate:.2%}", help=f"{res.control.users:,} users")
    c2.metric("CTR treatment", f"{res.treatment.rate:.2%}", help=f"{res.treatment.users:,} users")
    c3.metric("Lift (95% CI)", f"{res.lift:+.1%}", help=f"{res.ci_low:+.1%} to {res.ci_high:+.1%}")
    c4.metric(f"Users/arm for {mde:.0%} lift", f"{res.users_needed_per_arm:,}")
    st.plotly_chart(charts.lift_interval(res.lift, res.ci_low, res.ci_high))
    guard = cached.guardrail_tests(engine, flow_f, start, end, source_f, which)
    st.markdown("**Diversity and freshness**, per-user delta method as for CTR (a lower age is fresher)")
    st.dataframe(
        [{"metric": online.GUARDRAILS[column], "control": g.control.rate, "treatment": g.treatment.rate,
          "difference": f"{g.lift:+.1%} ({g.ci_low:+.1%} to {g.ci_high:+.1%})", "p": g.p_value,
          "significant": "yes" if g.p_value < 0.05 else "no"}
         for column, g in guard.items() if g.enough_data],
        hide_index=True,
        column_config={"control": st.column_config.NumberColumn(format="%.3f"),
                       "treatment": st.column_config.NumberColumn(format="%.3f"),
                       "p": st.column_config.NumberColumn(format="%.2g")})

# --- Cohorts ----------------------------------------------------------------------------
st.subheader("CTR by cohort")
cohorts = cached.ctr_by_cohort(engine, flow_f, start, end, source_f, which)
if cohorts:
    st.dataframe([{"arm": c["arm"], "cohort": c["label"], "lists": c["lists"], "trending lists": c["trending_lists"],
                   "users": c["users"], "impressions": c["impressions"], "CTR": f"{c[keys.CTR]:.2%}"}
                  for c in cohorts], hide_index=True)
st.caption("A list's cohort is what its user had done strictly before it was served: engaged (a click or an explicit "
           "positive), view-only (views only: a list personalised from those views), or nothing yet (the trending "
           "list). Same experiment window and filters as the verdict.")

# --- Over time ------------------------------------------------------------------------
st.subheader("Over time, per arm")
OVER_TIME = {keys.CTR: "CTR", keys.FEEDBACK_RATE: "Feedback rate", keys.ILD: "ILD",
             keys.CATEGORY_COVERAGE: "Category coverage", keys.MEAN_AGE_DAYS: "Mean age (days)"}
for i, (metric, title) in enumerate(OVER_TIME.items()):
    if i % 2 == 0:
        cols = st.columns(2)
    with cols[i % 2]:
        st.plotly_chart(charts.metric_over_time(per_day_arm, metric, title,
                                                percent=metric in (keys.CTR, keys.FEEDBACK_RATE)),
                        key=f"chart_{metric}")
st.caption("Aggregated per day, arm and flow (daily rollups of the log, refreshed as you load the page; the current "
           "day read live). Diversity is intra-list diversity (1 − mean pairwise "
           "similarity over category, field and type); freshness is the mean age of served items.")

# --- Traffic by source ----------------------------------------------------------------
st.subheader("Traffic by source")
st.plotly_chart(charts.lists_by_source(cached.requests_by_source(engine, flow_f, start, end)), key="chart_sources")
st.caption("Every source, for the flow and dates above: api is HTTP traffic (`ranker serve`), sim simulated "
           "traffic, cli `ranker recommend`; earlier lists were logged before sources were recorded.")
