//! placeholder
pub mod metrics;
pub mod serve;
