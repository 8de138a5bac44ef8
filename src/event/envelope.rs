//! The queue message body: `{"trace_id":..,"event":{..},"config_version":..}` (the seed's
//! format). Encoded by the collector, decoded and fully re-checked by the worker, since
//! other producers may publish straight to the subject.

use super::NormalizedEvent;

/// Why a queue message cannot be processed (permanent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub error_type: &'static str,
    pub reason: String,
}

/// A decoded queue message.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub trace_id: Option<String>,
    pub event: NormalizedEvent,
}

/// Encodes the envelope.
pub fn encode(trace_id: &str, event: &NormalizedEvent) -> Vec<u8> {
    let _ = (trace_id, event);
    todo!("helper")
}

/// Decodes an envelope or a bare event.
///
/// # Errors
/// `json_decode`, `invalid_format` or `validation_error`.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let _ = bytes;
    todo!("helper")
}

/// Deduplication id for the queue.
pub fn message_id(event: &NormalizedEvent) -> String {
    let _ = event;
    todo!("helper")
}
