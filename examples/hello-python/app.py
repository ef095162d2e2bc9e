"""A tiny WSGI app: says which app and which instance answered."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the type checker only: wsgiref.types is new in Python 3.11
    from wsgiref.types import StartResponse, WSGIEnvironment


def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    if environ.get("PATH_INFO") == "/env":
        key = environ.get("QUERY_STRING", "")
        body = os.environ.get(key, "").encode()
    else:
        name = os.environ.get("FOUNDRY_APP_NAME", "hello-python")
        index = os.environ.get("FOUNDRY_INSTANCE_INDEX", "?")
        greeting = os.environ.get("GREETING", "Hello")
        body = f"{greeting} from {name}, instance {index}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
