"""The launch-day benchmark (``make bench``) and the scale run (``make bench-scale``).

It drives the product only through its public interfaces: the ``wellness-perks`` CLI, the HTTP
endpoints served by ``gunicorn "wellness_perks:create_app()"``, ``celery -A worker worker`` and
``celery -A worker beat``, and the settings of ``config.py`` passed as environment variables.
It reads the database (read-only) to follow progress and to check the outcome. See README.md.
"""
