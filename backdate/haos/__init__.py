"""backdate as a Home Assistant app (formerly add-on): the container's entry point.

Home Assistant OS users cannot `pip install` on the host; they add this repository's URL in
Home Assistant and run backdate as an app. The app's options (`/data/options.json`, written by
the Supervisor from the Configuration tab) become a `backdate.toml`, and `backdate sync` runs it.
Run it with `python -m backdate.haos` (the Dockerfile's command).
"""
