"""Making releases: every change of droplet, config vars or processes is a numbered
release (v1, v2, ...) and starts a deployment that the reconciler rolls out. A build
that changes none of them makes no release: the current one goes on running.

Only the newest `KEEP_DROPLETS` releases of each app keep their droplet blob; older
blobs are deleted unless a kept release (of any app) shares them. A rollback to a
release whose droplet is gone is refused with a reason.
"""

from __future__ import annotations

from control.blobs import BlobStore
from control.errors import Conflict
from control.model import LIVE_STATES, AppSpec, Instance, InstanceState
from control.store import Store

KEEP_DROPLETS = 5


def make_release(
    store: Store,
    blobs: BlobStore,
    app: str,
    *,
    droplet: str,
    env: dict[str, str],
    processes: dict[str, str],
    pack: str | None,
    description: str,
    actor: str | None,
    kind: str = "deploy",
) -> int:
    """Create release v(N+1), make it current, and start rolling it out."""
    before = store.get_app(app)["release"]
    version = store.create_release(
        app, droplet=droplet, env=env, processes=processes, pack=pack, description=description
    )
    store.add_event(app, "release", f"v{version}: {description}", actor)
    store.start_deployment(app, before, version, kind, actor)
    prune_droplets(store, blobs)
    return version


def current_if_same(
    store: Store,
    app: str,
    *,
    build: str,
    droplet: str,
    env: dict[str, str],
    processes: dict[str, str],
) -> int | None:
    """The current release's version when `build` changes nothing it runs (an unchanged
    re-push): the same config and process types, and either the same droplet or the same
    source package built with the same options as the build behind the current release
    (a pack whose output holds build times, like a virtualenv, never makes the same droplet
    twice). A new release would replace every instance for nothing. None when anything
    differs or there is no release yet."""
    version = store.get_app(app)["release"]
    if not version:
        return None
    current = store.get_release(app, version)
    if (current["env"], current["processes"]) != (env, processes):
        return None
    if current["droplet"] == droplet:
        return int(version)
    this = store.get_build(build)
    options = store.build_options(build)
    for earlier in store.builds_of_release(app, int(version)):
        if earlier["source"] == this["source"] and store.build_options(earlier["id"]) == options:
            return int(version)
    return None


def rollback(
    store: Store,
    blobs: BlobStore,
    app: str,
    version: int,
    actor: str | None,
    why: str | None = None,
) -> int:
    """A new release with the droplet, config vars and processes of release `version`."""
    old = store.get_release(app, version)
    if not blobs.path(old["droplet"]).exists():
        raise Conflict(
            f"the droplet of {app} v{version} was pruned (only the last "
            f"{KEEP_DROPLETS} releases keep theirs)"
        )
    store.update_app(app, env=old["env"])
    return make_release(
        store,
        blobs,
        app,
        droplet=old["droplet"],
        env=old["env"],
        processes=old["processes"],
        pack=old["pack"],
        description=why or f"rollback to v{version}",
        actor=actor,
        kind="rollback",
    )


def restart(store: Store, app: str, actor: str | None) -> None:
    """Replace every instance, rolling, without a new release."""
    row = store.get_app(app)
    store.update_app(app, generation=row["generation"] + 1)
    store.start_deployment(app, row["release"], row["release"], "restart", actor)


def prune_droplets(store: Store, blobs: BlobStore) -> list[str]:
    kept, older = store.droplets_in_use(KEEP_DROPLETS)
    doomed = sorted(older - kept)
    for digest in doomed:
        blobs.delete(digest)
    return doomed


def progress(app: AppSpec, instances: list[Instance]) -> tuple[int, int, bool]:
    """(slots running what the app wants, slots wanted, rollout finished?)."""
    wanted = sum(app.desired_count(p) for p in app.processes)
    mine = [i for i in instances if i.app == app.name and not i.stopping and i.state in LIVE_STATES]
    done = {
        (i.process, i.index)
        for i in mine
        if i.state == InstanceState.RUNNING and app.current(i.release, i.generation)
    }
    stale = any(not app.current(i.release, i.generation) for i in mine)
    updated = sum(1 for p, idx in done if idx < app.desired_count(p))
    return updated, wanted, updated >= wanted and not stale
