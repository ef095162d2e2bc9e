"""map-route / unmap-route and the routing table the edges read."""

from __future__ import annotations

from tests.component.conftest import Control


async def table(control: Control) -> dict[str, dict[str, object]]:
    routes = (await control.http.get("/v1/routes")).json()["routes"]
    return {f"{r['host']}{r['path']}": r for r in routes}


async def test_mapped_route_reaches_the_app_with_its_options(control: Control) -> None:
    control.store.create_app("shop")
    r = await control.http.post(
        "/v1/apps/shop/routes",
        json={"route": "Shop.Example.COM/api/", "balance": "least-in-flight", "timeout": 30},
    )
    assert r.status_code == 200, r.text
    routes = await table(control)
    assert routes["shop.example.com/api"]["app"] == "shop"
    assert routes["shop.example.com/api"]["options"] == {
        "balance": "least-in-flight",
        "timeout": 30,
    }
    assert "shop.localhost/" in routes
    r = await control.http.request(
        "DELETE", "/v1/apps/shop/routes", json={"route": "shop.example.com/api"}
    )
    assert r.status_code == 200
    assert "shop.example.com/api" not in await table(control)


async def test_a_route_belongs_to_one_app(control: Control) -> None:
    control.store.create_app("one")
    control.store.create_app("two")
    assert (
        await control.http.post("/v1/apps/one/routes", json={"route": "x.test"})
    ).status_code == 200
    r = await control.http.post("/v1/apps/two/routes", json={"route": "x.test"})
    assert r.status_code == 409
    assert "another app" in r.json()["error"]


async def test_bad_routes_are_refused(control: Control) -> None:
    control.store.create_app("one")
    for body, status in (
        ({"route": "bad_host"}, 422),
        ({"route": "api.localhost"}, 409),
        ({"route": "x.test", "balance": "random"}, 422),
        ({"route": "one.localhost"}, 409),
    ):
        r = await control.http.post("/v1/apps/one/routes", json=body)
        assert r.status_code == status, (body, r.text)
    r = await control.http.request("DELETE", "/v1/apps/one/routes", json={"route": "no.test"})
    assert r.status_code == 404


async def test_edge_tokens_read_routes_and_post_only_router_lines(control: Control) -> None:
    control.store.create_app("one")
    _, edge = control.store.create_token("edge")
    async with control.client(edge) as c:
        assert (await c.get("/v1/routes")).status_code == 200
        ok = {"lines": [{"app": "one", "source": "router", "line": "GET / 200"}]}
        assert (await c.post("/v1/logs", json=ok)).status_code == 200
        bad = {"lines": [{"app": "one", "source": "app/web.0", "line": "forged"}]}
        assert (await c.post("/v1/logs", json=bad)).status_code == 403
        assert (await c.get("/v1/apps")).status_code == 403
