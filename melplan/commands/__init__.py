"""One module per CLI command; each parses options, calls one core function and renders."""
