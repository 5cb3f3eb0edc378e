"""Plotly figure builders. Pure functions: data in, figure out."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ranker import keys
from ranker.serving.online import EARLIER

ARM_COLORS = {"control": "#8c8c8c", "treatment": "#1f77b4"}
LABEL_COLORS = {"negative": "#8c8c8c", "positive": "#ff7f0e"}
SOURCE_COLORS = {"api": "#1f77b4", "cli": "#2ca02c", "sim": "#ff7f0e", EARLIER: "#c7c7c7"}
DAY_MS = 86_400_000


def loss_curves(history: Sequence[dict]) -> go.Figure:
    """Train and validation pairwise loss per epoch."""
    df = pd.DataFrame(history)
    fig = go.Figure()
    if not df.empty:
        fig.add_scatter(x=df["epoch"], y=df["train_loss"], mode="lines+markers", name="train")
        if "val_loss" in df and df["val_loss"].notna().any():
            fig.add_scatter(x=df["epoch"], y=df["val_loss"], mode="lines+markers", name="validation")
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch",
                      yaxis_title="pairwise loss", title="Loss")
    fig.update_xaxes(tick0=1, dtick=max(1, math.ceil(len(df) / 10)))  # whole epochs only
    return fig


def feature_histograms(df: pd.DataFrame, columns: Sequence[str]) -> go.Figure:
    """One histogram per feature, split by label."""
    long = df.melt(id_vars=["label"], value_vars=list(columns), var_name="feature", value_name="value")
    long["label"] = long["label"].map({0: "negative", 1: "positive"})
    fig = px.histogram(long, x="value", color="label", facet_col="feature", facet_col_wrap=len(columns),
                       nbins=20, barmode="overlay", opacity=0.6, histnorm="probability",
                       color_discrete_map=LABEL_COLORS, category_orders={"label": list(LABEL_COLORS)})
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=40, b=10))
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def metric_over_time(df: pd.DataFrame, metric: str, title: str, percent: bool = False) -> go.Figure:
    """A daily metric per arm (already aggregated per day and arm); ``percent`` for rates."""
    fig = px.line(df, x="day", y=metric, color="arm", markers=True, color_discrete_map=ARM_COLORS)
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=40, b=10), title=title, yaxis_title=None,
                      yaxis_tickformat=".1%" if percent else None)
    return _daily_axis(fig, df["day"])


def lists_by_source(df: pd.DataFrame) -> go.Figure:
    """Served lists per day, stacked by source (``day``, ``source``, ``lists`` per row)."""
    fig = px.bar(df, x="day", y="lists", color="source", color_discrete_map=SOURCE_COLORS,
                 category_orders={"source": list(SOURCE_COLORS)})
    fig.update_traces(width=0.8 * DAY_MS)  # a day wide, even with a single day to show
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=40, b=10), title="Served lists per day, by source",
                      yaxis_title=None, legend_title=None)
    return _daily_axis(fig, df["day"])


def _daily_axis(fig: go.Figure, day: pd.Series) -> go.Figure:
    days = pd.to_datetime(pd.Series(day).drop_duplicates())
    fig.update_xaxes(type="date", tickformat="%b %d", title=None,
                     dtick=DAY_MS if len(days) <= 14 else None)  # whole days, never hours
    if len(days) == 1:  # one point per series: show the day in the middle, not a millisecond range
        day = days.iloc[0]
        fig.update_xaxes(range=[day - pd.Timedelta(days=1), day + pd.Timedelta(days=1)])
    return fig


def lift_interval(lift: float, lo: float, hi: float) -> go.Figure:
    """The relative lift and its 95% CI on one axis, with zero marked."""
    fig = go.Figure(go.Scatter(x=[lift], y=["CTR lift"], mode="markers",
                               error_x=dict(type="data", symmetric=False, array=[hi - lift],
                                            arrayminus=[lift - lo]),
                               marker=dict(size=12)))
    fig.add_vline(x=0, line_dash="dash", line_color="gray")
    fig.update_layout(height=140, margin=dict(l=10, r=10, t=10, b=10), xaxis_tickformat="+.0%")
    return fig


METHOD_COLORS = {"greedy": "#2ca02c", "mmr": "#1f77b4", "dpp": "#ff7f0e"}


def diversity_curves(curves: dict, serving: str | None = None) -> go.Figure:
    """Expected CTR against mean ILD, one line per diversity method through its knob values, the base
    order as a grey reference and ``serving`` (a point's label) circled. ``curves`` is
    :func:`ranker.ops.report.diversity_curves`' result."""
    df = pd.DataFrame(curves["points"])
    fig = go.Figure()
    for method, color in METHOD_COLORS.items():
        part = df[df["method"] == method]
        if part.empty:
            continue
        text = ["" if knob is None or pd.isna(knob) else f"{knob:g}" for knob in part["knob"]]
        fig.add_scatter(x=part[keys.ILD], y=part["expected_ctr"], mode="lines+markers+text", name=method,
                        text=text, textposition="top center", line=dict(color=color), marker=dict(size=9),
                        hovertext=part["label"], hoverinfo="text+x+y")
    base = curves["base"]
    fig.add_scatter(x=[base[keys.ILD]], y=[base["expected_ctr"]], mode="markers", name="base order",
                    marker=dict(color="#8c8c8c", size=9, symbol="square"))
    now = df[df["label"] == serving]
    if not now.empty:
        fig.add_scatter(x=now[keys.ILD], y=now["expected_ctr"], mode="markers", name=f"serving now ({serving})",
                        marker=dict(size=18, symbol="circle-open", color="black", line=dict(width=2)))
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10), title="CTR against intra-list diversity",
                      xaxis_title="mean intra-list diversity", yaxis_title="expected CTR", yaxis_tickformat=".1%",
                      legend_title=None)
    return fig
