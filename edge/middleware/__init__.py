"""The edge's middleware, one module each; plain ASGI classes, not Starlette's BaseHTTPMiddleware (that one
runs the app in a task group and streams the response through memory object streams, which costs more than
everything here together).

edge/app.py wires them and says in which order and why. Per-route treatment (upload limits, raw bodies, WAF
field rules) is the route's (launchpad.api.v1.edge) rule, which each reads from the scope
(edge.transcoding.rules.rule_of).
"""
