"""Overview: what is in the database."""

import streamlit as st

from dashboard import common

st.title("Overview")
engine = common.get_engine_or_stop()
counts = common.table_counts(engine, common.database_label(engine))

st.caption(f"Database: `{common.database_label(engine)}`")
if counts["users"] == 0 and counts["items"] == 0:
    st.info("The database is empty. Build the demo world with `ranker demo init`, "
            "or import your own data.")

st.subheader("Data")
cols = st.columns(5)
for col, name in zip(cols, ("users", "items", "interactions", "impressions", "outcomes")):
    col.metric(name.capitalize(), f"{counts[name]:,}")
