"""Ranker: a lightweight neural reranking layer for recommendation systems.

The core library. It never imports streamlit; the dashboard and the CLI are thin
layers over it.
"""

__version__ = "0.1.0"
