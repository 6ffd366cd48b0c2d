"""CoreVital's built-in metric plugins, loaded through the ``corevital_otel`` entry-point group.

Each module is a plugin written only against the public API in ``corevital_otel``.
"""
