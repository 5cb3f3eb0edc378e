"""Streamlit entrypoint: builds the navigation and runs the chosen page."""

import streamlit as st

st.set_page_config(page_title="Ranker", page_icon="🔀", layout="wide")

pages = [
    st.Page("../pages/overview.py", title="Overview", icon="🏠", default=True),
    st.Page("../pages/data_training.py", title="Data & Training", icon="🧪"),
    st.Page("../pages/models.py", title="Models", icon="🗂️"),
    st.Page("../pages/rule_weights.py", title="Rule weights", icon="🎚️"),
    st.Page("../pages/ranking_preview.py", title="Ranking preview", icon="🔍"),
    st.Page("../pages/metrics_ab.py", title="Metrics & A/B", icon="📈"),
]
st.navigation(pages).run()
