"""A tiny WSGI app: says which app and which instance answered."""

import os


def app(environ, start_response):
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
