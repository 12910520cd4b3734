"""CLI commands as recipes: parse options, build components, call them, report."""
