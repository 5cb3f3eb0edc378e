"""Streamlit entrypoint: loads the serving state once, then builds the navigation and runs the chosen page."""

import streamlit as st

from dashboard.common import PAGES, warm_up

st.set_page_config(page_title="Ranker", page_icon=":material/swap_vert:", layout="wide")
warm_up()  # before any page: see dashboard.cached.warm_up for why it never runs beside one

# Material icons ship with Streamlit's own font, so they render on machines without an emoji font.
pages = [st.Page(f"../pages/{name}.py", title=title, icon=icon, default=name == "overview")
         for name, (title, icon) in PAGES.items()]
st.navigation(pages).run()
