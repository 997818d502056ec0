"""CLI subcommands that are big enough for a module of their own. Each module exposes
`add_parser(subparsers)` which registers its subcommand and handler."""
