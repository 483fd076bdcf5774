"""Stand-ins for real processes, as real modules that the linter and the formatter see."""
