"""`make report` (python -m tools.report): reports/F.backend_wiring_summary.md, see __main__.py.

Modules, one concern each: scrub (secrets out), sources (git, variables, the test log, /health modes),
scenarios (the calls, shared with tests/integration/test_endpoints.py), smoke (those calls recorded and
judged), stack (the report's own stack), markdown (the sections). Importing the package imports none of them:
the tests import scenarios alone.
"""
