//! mapek: the autonomic control plane of the ggen marketplace (monitor, analyze, plan, execute, knowledge).
#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]

pub mod analyze;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod execute;
pub mod faults;
pub mod keys;
pub mod knowledge;
pub mod located;
pub mod model;
pub mod monitor;
pub mod plan;
pub mod registry;
pub mod sim;
pub mod traces;
