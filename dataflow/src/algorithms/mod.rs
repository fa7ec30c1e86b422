//! Compositions of operators: the whole job's graph, and ways to run it.

pub mod graph;
pub mod replay;
pub mod restart;
