//! Login tokens, as the node uses them: the format, minting and verification
//! live in [`redrain_net::token`] (shared with the load generator and tests);
//! this module keeps the engine's paths to them.

pub use redrain_net::token::*;
