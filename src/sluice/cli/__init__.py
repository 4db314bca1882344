"""The `sluice` command line: one module per subcommand, wired in `main`."""
