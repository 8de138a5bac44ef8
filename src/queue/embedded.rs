//! The embedded durable queue (single-node mode): to be written.

/// Embedded queue.
#[derive(Clone, Debug)]
pub struct EmbeddedQueue;
