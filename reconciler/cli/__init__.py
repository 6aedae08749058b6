"""The `fleet` command: one module per group of verbs; this package only wires them together."""
