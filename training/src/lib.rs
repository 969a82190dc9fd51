//! The library half of the `training` CLI: what its subcommands are built from,
//! public so that tests and benchmarks can use it.

pub mod augment;
pub mod data;
pub mod features;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod report;
pub mod spec;
pub mod train;
