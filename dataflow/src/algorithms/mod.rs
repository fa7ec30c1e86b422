//! Compositions of operators: the whole job's graph, and ways to run it.

pub mod graph;
pub mod replay;
pub mod restart;

#[cfg(test)]
mod graph_vs_oracle;
#[cfg(test)]
mod restart_tests;
