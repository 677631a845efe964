//! The trivial reference server lives in the load generator (its `floor`
//! command measures the generator against it); the benchmarks use it from there.

pub use redrain_loadgen::reference_server::ReferenceServer;
