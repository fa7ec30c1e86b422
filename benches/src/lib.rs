//! Benchmarks for pageflow live in `benches/benches/`.
