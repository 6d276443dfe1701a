//! Send stage (… → report → **send**): every output is archived durably, queued in the outbox
//! (one row per output and destination, in PostgreSQL), and delivered by C-STORE with retries.
//!
//! - [`outbox`]: the archive, the durable outbox and its sender loop.
//! - [`scu`]: the C-STORE SCU that delivers one object to one destination.

pub mod outbox;
pub mod scu;
