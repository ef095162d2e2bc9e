"""The command line's side of Foundry: the API client, the client side of a deploy, and the
commands by group. It talks to the control plane over HTTP only, like any other client; the
control plane never imports it."""
