"""Models: versions and their metrics; activate, roll back, back up; compare two versions."""

import pandas as pd
import streamlit as st

from dashboard import cached, common
from ranker import keys
from ranker.rank import registry
from ranker.serving import views

st.title("Models")
engine = common.get_engine_or_stop()
if common.empty_database_notice(cached.table_counts(engine)):
    st.stop()
can_edit = common.operator_gate()

versions = registry.list_versions(engine)
active = registry.active_version(engine)
if hold := views.base_order_hold(engine):
    st.error(f"The treatment arm serves the base order (do no harm): {hold.removeprefix('serving the base order: ')}. "
             "Activating a version here ends it.")
if not versions:
    st.info("No trained versions yet: serving uses the rule-based ranker. Train one on the "
            "**Data & Training** page (or `ranker train`).")
    common.link("data_training", "Train a model on Data & Training")
    st.stop()


def row(v) -> dict:
    m = v.metrics or {}
    p = v.params or {}
    return {"version": v.version, "active": "●" if v.is_active else "", "created": v.created_at,
            "NDCG@10": (m.get("model") or {}).get(keys.NDCG_AT_10),
            "rule NDCG@10": (m.get("rule") or {}).get(keys.NDCG_AT_10),
            "base NDCG@10": (m.get("base") or {}).get(keys.NDCG_AT_10), "AUC": (m.get("model") or {}).get(keys.AUC),
            "pair acc": (m.get("model") or {}).get(keys.PAIRWISE_ACCURACY), "arch": p.get("arch"),
            "epochs": p.get("epochs"), "lr": p.get("lr"), "data": v.data_hash}


table = pd.DataFrame([row(v) for v in versions])
st.dataframe(table, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4f")
                            for c in ("NDCG@10", "rule NDCG@10", "base NDCG@10", "AUC", "pair acc")})
st.caption(f"Serving: **{active or 'rule-based ranker'}**. Every version's file is kept under "
           f"`{registry.versions_dir()}` as a backup.")

names = [v.version for v in versions]
c1, c2, c3, c4, c5 = st.columns([2, 1, 1, 1.5, 1.5], vertical_alignment="bottom")
choice = c1.selectbox("Version", names, index=len(names) - 1)
vs_base = cached.version_vs_base(engine, choice)
harmful = bool(vs_base and vs_base["harmful"])
activate = c2.button("Activate", disabled=not can_edit or choice == active, type="primary")
roll_back = c3.button("Roll back", disabled=not can_edit, help="Re-activate the previously active version")
use_rule = c4.button("Use rule-based ranker", disabled=not can_edit or active is None)
back_up = c5.button("Back up active file", disabled=not can_edit or active is None)
common.show_done()
if vs_base is None:
    st.caption(f"No retrain holdout on record to compare {choice} with the base order (`ranker retrain` makes one).")
elif harmful:
    st.warning(f"Do no harm: {vs_base['sentence']}.")
else:
    st.caption(vs_base["sentence"] + ".")
anyway = harmful and st.checkbox(f"Activate {choice} anyway", disabled=not can_edit,
                                 help="It ranks the holdout's lists significantly worse than the base order")
if can_edit:
    try:
        if activate and harmful and not anyway:
            st.error(f"Nothing changed: {choice} is significantly worse than the base order on the holdout; "
                     f"tick 'Activate {choice} anyway' to serve it regardless.")
        elif activate:
            registry.activate_version(engine, choice, actor=common.ACTOR)
            common.done(f"{choice} is now serving (hot reload, no restart).")
        if roll_back:
            common.done(f"Rolled back to {registry.rollback(engine, actor=common.ACTOR)}.")
        if use_rule:
            registry.activate_version(engine, registry.RULE, actor=common.ACTOR)
            common.done("The rule-based ranker is now serving.")
    except (registry.CheckpointError, registry.RegistryError) as exc:
        st.error(f"Nothing changed: {exc}")
    if back_up:
        path = registry.backup_active(engine)
        common.audit(engine, "model_backup", {"path": str(path)})
        st.success(f"Saved {path}" if path else "No active model file to back up.")

st.subheader("Compare two versions")
if len(names) < 2:
    st.caption("Train a second version to compare.")
else:
    a, b = st.columns(2)
    left = a.selectbox("A", names, index=len(names) - 2, key="cmp_a")
    right = b.selectbox("B", names, index=len(names) - 1, key="cmp_b")
    ra, rb = row(next(v for v in versions if v.version == left)), row(next(v for v in versions if v.version == right))
    diff = pd.DataFrame({"A": ra, "B": rb}).drop(["version", "active"])
    diff["B − A"] = [rb[k] - ra[k] if isinstance(ra[k], float) and isinstance(rb[k], float) else ""
                     for k in diff.index]
    st.dataframe(diff.astype(str), width="stretch")

st.subheader("Train/serve parity")
par = cached.parity(engine)
if par is None:
    st.caption("No training file yet: build one with `ranker dataset`.")
else:
    st.dataframe(par["features"], hide_index=True, width="stretch")
    (st.caption if par["gate_ok"] else st.warning)(
        f"{par['period']}; {par['population']}. Promotion gate: {par['gate_reason']}")
