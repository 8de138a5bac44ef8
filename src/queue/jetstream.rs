//! JetStream queue: to be written.

/// JetStream queue.
#[derive(Clone, Debug)]
pub struct JetStreamQueue;
