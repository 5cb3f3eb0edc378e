"""Data & Training: build a dataset, look at it, train, compare with the rule, promote."""

import pandas as pd
import streamlit as st

from dashboard import cached, charts, common, jobs_ui
from ranker import keys
from ranker.config import FEATURE_SETS, LOSSES
from ranker.ops import jobs
from ranker.rank import registry, tuning
from ranker.rank.dataset import SOURCES, DatasetConfig
from ranker.rank.dataset_files import SUFFIXES, data_format, train_path, val_path
from ranker.rank.features import feature_columns, use_feature_set
from ranker.rank.model import ARCHS
from ranker.rank.propensity import CORRECTIONS, save_swap_share, saved_estimate, swap_share
from ranker.rank.train import DataError, TrainConfig

st.title("Data & Training")
engine = common.get_engine_or_stop()
if common.empty_database_notice(cached.table_counts(engine)):
    st.stop()

can_edit = common.operator_gate()
TRAIN, VAL = train_path(), val_path()  # the training data built last (CSV or Parquet)

# --- Dataset ------------------------------------------------------------------------
st.header("1. Training data")
saved_set = tuning.feature_set(engine)  # this page computes the operator's feature set, as serving does
with st.form("dataset"):
    c1, c2, c3, c4, c5 = st.columns(5)
    neg_ratio = c1.number_input("Negatives per positive", 0.5, 10.0, float(DatasetConfig.neg_ratio), 0.5)
    window = c2.number_input("Window (days)", 1, 365, int(DatasetConfig.window_days), help="Lists from the last N "
                             "days; the base model that gives model_score sees only earlier data.")
    source = c3.selectbox("Source", SOURCES, index=SOURCES.index(DatasetConfig.source),
                          help="feedback: explicit feedback vs viewed-not-engaged; impressions: served lists")
    feature_set = c4.selectbox("Feature set", FEATURE_SETS, index=FEATURE_SETS.index(saved_set),
                               help="guide: the guide's four features. history: plus the user's affinity to the "
                                    "item's category, field and type, the item's CTR and the user's activity "
                                    "recency, all as of each list. Saved for training and serving: a model "
                                    "trained on the other set is not served until one is trained on this one.")
    fmt = c5.selectbox("Format", list(SUFFIXES), index=list(SUFFIXES).index(data_format(TRAIN)),
                       help="csv: one file, as the guide's `--data PATH.csv`. parquet: a folder partitioned by "
                            "day, smaller and faster to read; training streams one of 1M rows or more in "
                            "batches, so memory stays flat.")
    go = st.form_submit_button("Generate dataset", disabled=not can_edit)
if go and can_edit:
    if feature_set != saved_set:
        tuning.save_feature_set(engine, feature_set, actor=common.ACTOR)
        use_feature_set(feature_set)
    out = train_path(fmt)
    job, _ = jobs.submit(engine, "dataset", {"output": str(out), "val_output": str(val_path(out)),
                                             "neg_ratio": neg_ratio, "window_days": float(window),
                                             "source": source, "features": feature_set})
    st.toast(f"Dataset job #{job.id} started")
jobs_ui.job_status(engine, "dataset", can_edit)

try:
    data, unreadable = cached.dataset_preview(TRAIN), None
except DataError as exc:
    data, unreadable = None, str(exc)
if unreadable:
    st.error(unreadable)
elif data is None:
    st.info("No dataset yet: generate one above (or `ranker dataset`).")
elif data.missing:
    st.error(f"`{TRAIN}` has no column(s) {', '.join(data.missing)}, so training on it will fail. "
             "Generate a new dataset above (or `ranker dataset`).")
else:
    first = "" if data.complete else "the first "
    of = f" of {data.total_rows:,}" if data.total_rows is not None and not data.complete else ""
    st.caption(f"`{TRAIN}` ({data.size_bytes / 1e6:.1f} MB): {first}{data.rows:,}{of} rows below"
               + (f"; validation rows in `{VAL}`" if VAL.exists() else ""))
    c1, c2, c3 = st.columns(3)
    c1.metric("Rows", f"{data.rows:,}")
    c2.metric("Positives", f"{data.positives:,}")
    c3.metric("Positive share", f"{data.positive_share:.1%}")
    st.dataframe(data.head, hide_index=True, width="stretch")
    st.plotly_chart(charts.feature_histograms(data.sample, feature_columns()))

# --- Training -----------------------------------------------------------------------
st.header("2. Train the neural ranker")
with st.form("train"):
    c1, c2, c3, c4, c5 = st.columns(5)
    epochs = c1.number_input("Epochs", 1, 500, TrainConfig.epochs)
    batch = c2.number_input("Batch size", 8, 65536, TrainConfig.batch_size)
    lr = c3.number_input("Learning rate", 1e-5, 1.0, TrainConfig.lr, format="%.4f")
    arch = c4.selectbox("Architecture", list(ARCHS), index=list(ARCHS).index(TrainConfig.arch),
                        format_func=lambda a: f"{a} ({ARCHS[a][0]}/{ARCHS[a][1]})")
    val_split = c5.number_input("Validation split", 0.0, 0.5, DatasetConfig.val_fraction, 0.05,
                                help=f"Used when there is no {VAL.name}; whole lists are held out.")
    estimate = saved_estimate(engine)
    c1, c2 = st.columns(2)
    loss = c1.selectbox("Loss", LOSSES, index=LOSSES.index(TrainConfig.loss),
                        help="pairwise (RankNet over sampled pairs, the default), or listwise over whole lists: "
                             "listnet, lambdaloss. Position correction weighs pairs, so it needs pairwise.")
    correction = c2.selectbox(
        "Position correction", CORRECTIONS, index=CORRECTIONS.index(TrainConfig.position_correction),
        help="ipw weights each click by 1 / p(its position), so items the old order showed low are not "
             "learnt as bad; p comes from randomised swaps (`ranker propensity estimate`). auto: ipw when p "
             "can be had, else none.")
    st.caption(f"Position bias: {estimate.summary()}." if estimate else
               "Position bias: no estimate saved; training estimates one from the logged swaps, if any "
               "(`ranker propensity estimate` saves one).")
    train_clicked = st.form_submit_button("Train", disabled=not (TRAIN.exists() and can_edit))
if train_clicked and can_edit:
    params = {"data": str(TRAIN), "val": str(VAL) if VAL.exists() else None,
              "val_split": float(val_split), "activate": False,
              "config": {"epochs": int(epochs), "batch_size": int(batch), "lr": float(lr), "arch": arch,
                         "loss": loss, "position_correction": correction}}
    job, created = jobs.submit(engine, "train", params)
    if created:
        st.toast(f"Training job #{job.id} started")
    else:
        st.info(f"Training job #{job.id} is already running; showing it.")
jobs_ui.job_status(engine, "train", can_edit)
with st.expander("Position-bias experiment"):
    st.caption("A share of the treatment arm's reranked lists is served with random adjacent pairs swapped; "
               "the clicks on them estimate how much each position is looked at (`ranker propensity "
               "estimate`), which position correction uses. 0 turns the experiment off.")
    share_saved = swap_share(engine)
    share = st.number_input("Share of lists with randomised swaps", 0.0, 1.0, share_saved, 0.01, format="%.2f")
    if st.button("Save swap share", disabled=not can_edit or share == share_saved) and can_edit:
        save_swap_share(engine, float(share))
        common.done(f"Saved. {share:.0%} of the treatment arm's reranked lists carry randomised swaps from the "
                    "next request.")

last = jobs_ui.latest(engine, "train")
if last is not None and last.status == "succeeded" and last.result:
    res = last.result
    m = res["metrics"]
    st.subheader(f"Result: {res['version']}")
    table = pd.DataFrame({name: m[name] for name in ("model", "rule", "base")}).T
    table.index = ["neural ranker", "rule-based", "base order"]
    st.dataframe(table.style.format("{:.4f}"), width="stretch")
    st.caption(f"Evaluated on {m['evaluated_on']} data: {m['rows']:,} rows, {m['groups']:,} lists.")
    worse = (m["model"].get(keys.NDCG_AT_10) or 0.0) < (m["rule"].get(keys.NDCG_AT_10) or 0.0)
    if worse:
        model_ndcg, rule_ndcg = m["model"][keys.NDCG_AT_10], m["rule"][keys.NDCG_AT_10]
        st.warning(f"{res['version']} ranks worse than the rule-based ranker on this data (NDCG@10 "
                   f"{common.fmt(model_ndcg)} vs {common.fmt(rule_ndcg)}): promoting it "
                   "would serve worse lists. Train longer, or with more data.")
    active = registry.active_version(engine)
    if active == res["version"]:
        st.success(f"{res['version']} is serving.")
    elif st.button(f"Promote {res['version']} to serving", type="secondary" if worse else "primary",
                   disabled=not can_edit) and can_edit:
        registry.activate_version(engine, res["version"], actor=common.ACTOR)
        common.done(f"{res['version']} is now serving (hot reload, no restart).")
elif registry.active_version(engine) is None:
    st.info("No trained model yet: serving uses the rule-based ranker (weights on the **Rule weights** page). "
            + ("Press **Train** above." if TRAIN.exists() else "Generate a dataset above, then press **Train**."))
common.show_done()

