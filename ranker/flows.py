"""The flow router: which flows exist, who may request them, and what item type each serves.

A flow maps a user role to the item type it receives (``config.FLOWS``):
``developer-startup``, ``investor-startup``, ``founder-developer``, ``founder-investor``,
plus the generic ``user-item``, open to any role and any item type (imported data such
as MovieLens). Trending lists (``trending``, the user's own item type, or
``trending-<item type>``) are served by popularity and never reranked.

Every other module asks this one; none reads ``config.FLOWS`` itself.
"""

from __future__ import annotations

from ranker import config
from ranker.errors import RankerError

GENERIC_FLOW = "user-item"
TRENDING = config.TRENDING_FLOW
#: Item types a trending list can name: the platform's, and ``item`` for imported data.
TRENDING_TYPES = (*config.ITEM_TYPES, "item")


class FlowError(RankerError, ValueError):
    """A request that names an unknown user or flow, or a flow the user's role cannot use."""


class UnknownUserError(FlowError):
    """A request for a user id that is not in the database."""


def personalised_flows() -> list[str]:
    """Every reranked flow id."""
    return list(config.FLOWS)


def request_flows() -> list[str]:
    """Every flow id a request may name: the personalised flows, then the trending lists."""
    return [*config.FLOWS, TRENDING, *(f"{TRENDING}-{t}" for t in TRENDING_TYPES)]


def flow_item_type(flow: str) -> str | None:
    """The item type a personalised flow receives (None: any type).

    Raises
    ------
    FlowError
        Unknown flow.
    """
    if flow not in config.FLOWS:
        raise FlowError(f"unknown flow {flow!r}; flows: {', '.join(config.FLOWS)}")
    return config.FLOWS[flow][1]


def flow_role(flow: str) -> str | None:
    """The role a personalised flow is for (None: any role)."""
    return config.FLOWS[flow][0]


def own_flows(role: str) -> list[str]:
    """The flows made for ``role`` (not the generic one)."""
    return [f for f, (r, _) in config.FLOWS.items() if r == role]


def valid_flows(role: str) -> list[str]:
    """Flows a user of ``role`` may request: their role's flows, then ``user-item``."""
    return own_flows(role) + [f for f, (r, _) in config.FLOWS.items() if r is None]


def flow_for(role: str, item_type: str) -> str:
    """The flow that serves ``item_type`` to a user of ``role`` (``user-item`` when none does)."""
    return next((f for f in own_flows(role) if config.FLOWS[f][1] == item_type), GENERIC_FLOW)


def check_flow(role: str, flow: str, user_id: int | None = None) -> str | None:
    """The flow's item type, after checking that a user of ``role`` may request it.

    Raises
    ------
    FlowError
        Unknown flow, or one meant for another role; the message lists the valid flows.
    """
    who = f"user {user_id} ({role})" if user_id is not None else f"a {role}"
    valid = valid_flows(role)
    if flow not in config.FLOWS:
        raise FlowError(f"unknown flow {flow!r}; valid flows for {who}: {', '.join(valid)}")
    if flow not in valid:
        raise FlowError(f"flow {flow!r} is for {flow_role(flow)}s, but {who} is not one; "
                        f"valid flows for {who}: {', '.join(valid)}")
    return config.FLOWS[flow][1]


def is_trending(flow: str) -> bool:
    return flow == TRENDING or flow.startswith(TRENDING + "-")


def trending_item_type(flow: str, role: str, known_types: list[str]) -> str | None:
    """The item type of a trending list: the one it names, or the role's own (None: any).

    Raises
    ------
    FlowError
        A trending list for an item type the catalogue does not hold.
    """
    if "-" in flow:
        item_type: str | None = flow.split("-", 1)[1]
    else:
        own = [config.FLOWS[f][1] for f in valid_flows(role) if config.FLOWS[f][1]]
        item_type = own[0] if own else None
    if item_type is not None and item_type not in known_types:
        raise FlowError(f"unknown trending list {flow!r}; choose {TRENDING} or one of: "
                        + ", ".join(f"{TRENDING}-{t}" for t in known_types))
    return item_type
