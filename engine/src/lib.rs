//! placeholder

pub mod tickets;
