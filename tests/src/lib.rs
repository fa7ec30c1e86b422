//! Integration tests for pageflow live in `tests/tests/`.
