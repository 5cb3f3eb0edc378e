"""Streamlit entrypoint: builds the navigation and runs the chosen page."""

import streamlit as st

st.set_page_config(page_title="Ranker", page_icon="🔀", layout="wide")

pages = [
    st.Page("../pages/overview.py", title="Overview", icon="🏠", default=True),
]
st.navigation(pages).run()
