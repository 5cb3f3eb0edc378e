"""Streamlit entrypoint: builds the navigation and runs the chosen page."""

import streamlit as st

from dashboard.common import PAGES

st.set_page_config(page_title="Ranker", page_icon=":material/swap_vert:", layout="wide")

# Material icons ship with Streamlit's own font, so they render on machines without an emoji font.
pages = [st.Page(f"../pages/{name}.py", title=title, icon=icon, default=name == "overview")
         for name, (title, icon) in PAGES.items()]
st.navigation(pages).run()
