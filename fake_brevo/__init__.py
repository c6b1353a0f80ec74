"""A fake Brevo API v3 for tests, the demo and the benchmark: never imported by the job.

``python -m fake_brevo.server`` serves it on loopback; ``fake_brevo.openapi`` checks that
requests and responses (the client's and this server's) keep to Brevo's published
description. Both are test tooling: the product's Brevo code is ``funnels.brevo``.
"""
