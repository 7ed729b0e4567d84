"""The edge: HTTP routes, wire models, auth, error mapping, stream framing."""
