"""The benchmark tools' own tests (run with the rest by pytest)."""
