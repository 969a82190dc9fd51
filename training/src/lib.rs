//! The library half of the `training` CLI: what its subcommands are built from,
//! public so that tests and benchmarks can use it.

#![forbid(unsafe_code)]

pub mod augment;
pub mod data;
pub mod metrics;
pub mod optim;
pub mod report;
pub mod spec;
pub mod train;
