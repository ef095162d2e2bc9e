"""Caps on what one request may carry, and the pure checks that apply them.

Rules kept here (the handlers and the body readers in control/context.py enforce them):
  * every request body has a cap chosen by what the endpoint takes: a declared
    Content-Length over it is refused (413) before any byte is read, and a body without
    one (chunked) is counted as it streams and refused the moment it passes the cap;
  * a compressed body is capped twice: as sent, and as it inflates;
  * an app's config vars add up (keys plus values, as UTF-8) to at most
    `config_vars` bytes (Heroku's 32 KB); a change that would pass the cap is refused
    and stores nothing, unless it makes the total smaller (so an app that is over the
    cap can always shrink back under it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestLimits:
    """Byte caps per kind of request body (uploads are capped by `ControlConfig.max_upload`)."""

    json: int = 1 << 20  # an ordinary JSON request (scale, env, routes, tokens)
    node_report: int = 32 << 20  # heartbeats and log batches (500 lines of 8 KiB, escaped)
    resource_list: int = 16 << 20  # resource lists and listing deltas, as sent (gzip'd)
    resource_list_expanded: int = 64 << 20  # ...and as they inflate (200,000 entries)
    git_push: int = 1 << 30  # a git push's request body, as sent and as it inflates
    config_vars: int = 32 * 1024  # one app's config vars in total (Heroku's limit)


def config_size(env: Mapping[str, str]) -> int:
    """What config vars weigh: their keys and values as UTF-8 bytes."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in env.items())


def config_problem(before: Mapping[str, str], after: Mapping[str, str], cap: int) -> str | None:
    """Why the app's config may not change from `before` to `after`, or None."""
    size = config_size(after)
    if size <= cap or size <= config_size(before):
        return None
    return (
        f"config vars would add up to {size} bytes; an app's config vars (keys and "
        f"values) may total at most {cap} bytes"
    )
