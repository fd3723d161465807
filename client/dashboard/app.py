"""The dashboard's Starlette app: the JSON API, the static pages, plotly.js from the plotly package.

Off loopback every request needs the token (``Authorization: Bearer``, the cookie ``?token=`` sets,
or ``?token=`` itself); on loopback the Host header must name loopback (no DNS rebinding).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import api_routes
from .source import ClusterSource, ExperimentSource

__all__ = ["create_app", "is_loopback", "COOKIE"]

_log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
COOKIE = "retia_dashboard_token"
LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "::1", "[::1]"]
# scripts only from the dashboard itself; 'unsafe-eval' because plotly's WebGL traces (parcoords) compile
# their shaders' glue with new Function (regl); inline styles are plotly's
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a --host value) binds only this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TokenMiddleware:
    """Refuses (401) a request without the token; ``?token=`` sets it as a cookie and redirects."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    def _ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        auth = request.headers.get("authorization", "")
        if self._ok(auth[7:] if auth.startswith("Bearer ") else None) or self._ok(
            request.cookies.get(COOKIE)
        ):
            await self.app(scope, receive, send)
            return
        if self._ok(request.query_params.get("token")):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            query = "&".join(f"{k}={v}" for k, v in rest)
            response: Response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), 303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        else:
            response = JSONResponse(
                {
                    "error": "this dashboard needs its token: open the URL it printed at start (…?token=…), "
                    "or send 'Authorization: Bearer TOKEN'"
                },
                status_code=401,
            )
        await response(scope, receive, send)


class HeadersMiddleware:
    """Security headers on every response: the content policy, no sniffing, no framing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _page(name: str) -> Route:
    async def endpoint(request: Request) -> Response:
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})

    return Route("/" if name == "overview.html" else "/" + name.removesuffix(".html"), endpoint)


async def _plotly(request: Request) -> Response:
    import plotly

    return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js")


def create_app(
    source: ExperimentSource | None,
    cluster: ClusterSource | None = None,
    *,
    token: str | None = None,
    loopback: bool = True,
) -> Starlette:
    """The app over an experiment (``source``) and/or a dispatcher (``cluster``); ``token``: required."""
    if source is None and cluster is None:
        raise ValueError("the dashboard needs an experiment directory or a dispatcher to watch")
    middleware = [Middleware(HeadersMiddleware)]
    if token:
        middleware.append(Middleware(TokenMiddleware, token=token))
    if loopback and not token:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS))
    routes = [
        *api_routes(source, cluster),
        *(_page(p) for p in ("overview.html", "trials.html", "trial.html", "cluster.html")),
        Route("/static/plotly.min.js", _plotly),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=middleware)
