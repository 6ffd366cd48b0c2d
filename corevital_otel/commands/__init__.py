"""Sub-commands of ``corevital-otel``. A module here defines ``register(subcommands)``, which adds its
parser and sets ``run=<function(namespace) -> exit code>`` as the parser default."""
