"""Metrics & A/B: CTR, diversity and freshness per arm over time, the verdict, rollout, simulation."""

from datetime import timedelta

import streamlit as st

from dashboard import charts, common, jobs_ui
from ranker import keys
from ranker.ops import jobs
from ranker.serving import experiments, online

st.title("Metrics & A/B")
engine = common.get_engine_or_stop()
if common.empty_database_notice(common.table_counts(engine, common.database_label(engine))):
    st.stop()
can_edit = common.operator_gate()


@st.cache_data(ttl=15, show_spinner=False)
def daily(_engine, url: str, flow: str | None, start, end, source: str | None = None):
    return online.daily_metrics(_engine, flow, start, end, source=source)


@st.cache_data(ttl=15, show_spinner=False)
def verdict(_engine, url: str, flow: str | None, start, end, mde: float, source: str | None):
    return online.ab_test(_engine, flow, start, end, mde=mde, source=source)


@st.cache_data(ttl=15, show_spinner=False)
def guardrails(_engine, url: str, flow: str | None, start, end, source: str | None):
    return online.guardrail_tests(_engine, flow, start, end, source=source)


@st.cache_data(ttl=15, show_spinner=False)
def by_source(_engine, url: str, flow: str | None, start, end):
    return online.daily_requests_by_source(_engine, flow, start, end)


everything = daily(engine, str(engine.url), None, None, None)
common.show_done()

# --- Experiment controls ------------------------------------------------------------
exp = experiments.get_experiment(engine)
with st.expander(f"Experiment: {'running' if exp.running else 'stopped'}, rollout {exp.rollout:g}%",
                 expanded=False):
    rollout = st.slider("Rollout: % of users in treatment (reranked)", 0, 100, int(exp.rollout), 5)
    c1, c2, c3 = st.columns(3)
    if c1.button("Save rollout", disabled=not can_edit or rollout == exp.rollout) and can_edit:
        experiments.update_experiment(engine, rollout=rollout, actor=common.ACTOR)
        common.done(f"Rollout saved: {rollout}% of users get the reranked list.")
    if exp.running:
        if c2.button("Stop experiment", disabled=not can_edit,
                     help="Everyone gets the ranker; the A/B split ends") and can_edit:
            experiments.update_experiment(engine, running=False, actor=common.ACTOR)
            common.done("Experiment stopped: everyone gets the ranker.")
    elif c2.button("Start experiment", disabled=not can_edit) and can_edit:
        experiments.update_experiment(engine, running=True, actor=common.ACTOR)
        common.done("Experiment started.")

# --- Simulated traffic --------------------------------------------------------------
with st.expander("Run simulated traffic on the demo world", expanded=everything.empty):
    c1, c2, c3 = st.columns(3)
    days = c1.number_input("Days", 1, 60, 3)
    per_day = c2.number_input("Requests per day", 10, 20000, 300, 50)
    seed = c3.number_input("Seed", 0, 10**6, 0)
    if st.button("Run simulation", disabled=not can_edit) and can_edit:
        job, _ = jobs.submit(engine, "simulate", {"days": int(days), "requests_per_day": int(per_day),
                                                  "seed": int(seed)})
        st.toast(f"Simulation job #{job.id} started")
jobs_ui.job_status(engine, "simulate", can_edit)

# --- Filters ------------------------------------------------------------------------
if everything.empty:
    st.info("No served traffic yet. Online metrics need served lists with outcomes: run simulated traffic above "
            "(demo world) or serve real requests over HTTP (`ranker serve`) or through `recommend()`; imported "
            "data sets have no served traffic until then.")
    st.stop()
c1, c2, c3 = st.columns([1, 1, 2])
flow = c1.selectbox("Flow", ["all", *sorted(everything["flow"].unique())])
sources = by_source(engine, str(engine.url), None, None, None)["source"].unique()
source = c2.selectbox("Source", ["all", *sorted(sources)],
                      help="Where the requests came from: api (HTTP), sim (simulator), cli (`ranker recommend`), "
                           "earlier (logged before sources were recorded)")
lo, hi = everything["day"].min(), everything["day"].max()
picked = c3.date_input("Dates", (lo, hi), min_value=lo, max_value=hi)
start, end = (picked[0], picked[1] + timedelta(days=1)) if len(picked) == 2 else (lo, hi + timedelta(days=1))
flow_f, source_f = (None if flow == "all" else flow), (None if source == "all" else source)
df = daily(engine, str(engine.url), flow_f, start, end, source_f)
if df.empty:
    st.info("No served traffic for these filters.")
    st.stop()
per_day_arm = df.groupby(["day", "arm"], as_index=False).agg(
    impressions=("impressions", "sum"), clicks=("clicks", "sum"), feedback=("feedback", "sum"),
    lists=("lists", "sum"))
weighted = df.assign(ild_w=df[keys.ILD] * df["lists"], age_w=df[keys.MEAN_AGE_DAYS] * df["lists"],
                     cov_w=df[keys.CATEGORY_COVERAGE] * df["lists"]).groupby(["day", "arm"], as_index=False)[
    ["ild_w", "age_w", "cov_w"]].sum()
per_day_arm = per_day_arm.merge(weighted, on=["day", "arm"])
per_day_arm["CTR"] = per_day_arm["clicks"] / per_day_arm["impressions"]
per_day_arm["Feedback rate"] = per_day_arm["feedback"] / per_day_arm["impressions"]
per_day_arm["ILD"] = per_day_arm["ild_w"] / per_day_arm["lists"]
per_day_arm["Category coverage"] = per_day_arm["cov_w"] / per_day_arm["lists"]
per_day_arm["Mean age (days)"] = per_day_arm["age_w"] / per_day_arm["lists"]

# --- Verdict --------------------------------------------------------------------------
st.subheader("A/B verdict")
mde = st.select_slider("Minimum detectable lift", [0.01, 0.02, 0.05, 0.1, 0.2], value=0.05,
                       format_func=lambda v: f"{v:.0%}")
res = verdict(engine, str(engine.url), flow_f, start, end, mde, source_f)
(st.success if res.enough_data and res.p_value is not None and res.p_value < 0.05 else st.info)(res.verdict)
if res.enough_data:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("CTR control", f"{res.control.rate:.2%}", help=f"{res.control.users:,} users")
    c2.metric("CTR treatment", f"{res.treatment.rate:.2%}", help=f"{res.treatment.users:,} users")
    c3.metric("Lift (95% CI)", f"{res.lift:+.1%}", help=f"{res.ci_low:+.1%} to {res.ci_high:+.1%}")
    c4.metric(f"Users/arm for {mde:.0%} lift", f"{res.users_needed_per_arm:,}")
    st.plotly_chart(charts.lift_interval(res.lift, res.ci_low, res.ci_high))
    guard = guardrails(engine, str(engine.url), flow_f, start, end, source_f)
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

# --- Over time ------------------------------------------------------------------------
st.subheader("Over time, per arm")
RATES = ("CTR", "Feedback rate")
for i, metric in enumerate((*RATES, "ILD", "Category coverage", "Mean age (days)")):
    if i % 2 == 0:
        cols = st.columns(2)
    with cols[i % 2]:
        st.plotly_chart(charts.metric_over_time(per_day_arm, metric, metric, percent=metric in RATES),
                        key=f"chart_{metric}")
st.caption("Aggregated in SQL per day, arm and flow. Diversity is intra-list diversity (1 − mean pairwise "
           "similarity over category, field and type); freshness is the mean age of served items.")

# --- Traffic by source ----------------------------------------------------------------
st.subheader("Traffic by source")
st.plotly_chart(charts.lists_by_source(by_source(engine, str(engine.url), flow_f, start, end)), key="chart_sources")
st.caption("Every source, for the flow and dates above: api is HTTP traffic (`ranker serve`), sim simulated "
           "traffic, cli `ranker recommend`; earlier lists were logged before sources were recorded.")
