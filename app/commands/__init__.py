"""One module per ``asr`` subcommand; each defines ``register(subparsers)`` that adds its parser
and sets ``handler`` (a function taking the parsed args and returning an exit code)."""
