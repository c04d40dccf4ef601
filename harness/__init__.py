"""The process harness the integration tests and the benchmarks share.

It starts and stops the product's processes with the commands an operator runs (gunicorn,
``celery -A worker worker``, ``celery -A worker beat``, ``wellness-perks``), the services they
need (PostgreSQL databases, a private ``redis-server``, an SMTP server), and mints sign-in tokens
as the product does.

Nothing here imports the product (``wellness_perks``, ``worker``, ``config``), ``tests`` or
``bench``: the product is driven through its commands, its HTTP endpoints and its database, so
what is exercised is what is deployed. Failures raise ``harness.errors.HarnessError``; whether
a missing service skips or fails a test is the tests' business (``tests/helpers.py``).

- ``commands``  the project's installed commands; ``run_cli`` (wall time, peak RSS, CPU)
- ``process``   ``Service``: a process in a group of its own, output to a file; ``tail``
- ``stack``     ``Stack``: gunicorn, Celery workers and beat, waited for; ``product_env``
- ``postgres``  databases created and dropped; ``connect``
- ``broker``    ``RedisServer`` (private, may be killed and restarted); ``redis_ping``
- ``smtp``      ``SmtpListener``: an aiosmtpd server on a local port
- ``tokens``    ``mint_sign_in_token``: the product's sign-in token format
- ``waiting``   ``wait_for``: poll with a deadline
- ``ports``     ``free_port``
"""
