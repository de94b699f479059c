"""The ``samespace`` subcommands that live apart from the module doing their work."""
