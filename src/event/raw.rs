//! The first step from untrusted JSON to an event: every field captured with its JSON shape
//! (absent, null, a string, a number, an object, anything else) straight from the parser,
//! without building a `serde_json::Value` tree of the event (issue 13: the trees were a fifth
//! of the embedded path's CPU). Keys are matched without being copied, strings are borrowed
//! from the input when they hold no escapes, unknown fields are skipped. Nothing here judges a
//! field: `parse.rs` applies the rules to what was captured, so the same checks run whichever
//! way the event arrives (bytes, or a `Value`, which is a serde deserializer too).
//!
//! What the `Value` decoding it replaced did, and this keeps: a key given twice keeps its last
//! value; nesting counts against serde_json's recursion limit everywhere, unknown fields
//! included (they are walked by [`Skip`], which recurses through the deserializer); invalid
//! UTF-8, lone surrogates and numbers out of range are syntax errors of the parser. Every
//! visitor here accepts every JSON value, so the parser's only errors are syntax errors.
//! `attributes` and `metadata` are free-form, so they still become `Value` maps.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::MAX_METRICS;

/// A JSON number as the parser reported it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Num {
    /// A non-negative integer.
    U(u64),
    /// A negative integer.
    I(i64),
    /// Anything with a fraction or an exponent.
    F(f64),
}

impl Num {
    /// As `serde_json::Number::as_f64`.
    pub(super) fn as_f64(self) -> f64 {
        match self {
            Num::U(u) => u as f64,
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }
}

/// A field expected to hold a string.
#[derive(Debug, Default)]
pub(super) enum Text<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    /// Any other JSON type.
    Other,
}

/// A field expected to hold a number.
#[derive(Debug, Default)]
pub(super) enum Numeric {
    #[default]
    Absent,
    Null,
    Num(Num),
    Other,
}

/// A field expected to hold an object of any content (`attributes`, `metadata`).
#[derive(Debug, Default)]
pub(super) enum Object {
    #[default]
    Absent,
    Null,
    Map(Map<String, Value>),
    Other,
}

/// `metrics`: the items up to [`MAX_METRICS`]; past it only counted.
#[derive(Debug, Default)]
pub(super) enum Metrics<'a> {
    #[default]
    Absent,
    Items(Vec<MetricItem<'a>>),
    /// More than [`MAX_METRICS`] items: how many (none of them kept).
    TooMany(usize),
    Other,
}

/// One item of `metrics`.
#[derive(Debug)]
pub(super) enum MetricItem<'a> {
    Object(RawMetric<'a>),
    Other,
}

/// The fields of one metric object.
#[derive(Debug, Default)]
pub(super) struct RawMetric<'a> {
    pub(super) parameter_key: Text<'a>,
    pub(super) value: Numeric,
    pub(super) quality: Numeric,
    pub(super) attributes: Object,
}

/// The fields of one event object.
#[derive(Debug, Default)]
pub(super) struct RawEvent<'a> {
    pub(super) project_id: Text<'a>,
    pub(super) site_id: Text<'a>,
    pub(super) device_id: Text<'a>,
    pub(super) protocol: Text<'a>,
    pub(super) source_timestamp: Text<'a>,
    pub(super) metrics: Metrics<'a>,
    pub(super) config_version: Text<'a>,
    pub(super) event_id: Text<'a>,
    pub(super) metadata: Object,
}

impl RawEvent<'_> {
    /// True when any field of the event model was given (even as null): what tells a bare
    /// event published by another producer from an object that is no event at all.
    pub(super) fn has_event_fields(&self) -> bool {
        !matches!(self.project_id, Text::Absent)
            || !matches!(self.site_id, Text::Absent)
            || !matches!(self.device_id, Text::Absent)
            || !matches!(self.protocol, Text::Absent)
            || !matches!(self.source_timestamp, Text::Absent)
            || !matches!(self.metrics, Metrics::Absent)
    }
}

/// `event` of a queue envelope.
#[derive(Debug, Default)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per decoded message, on the stack; a Box would cost an allocation each"
)]
pub(super) enum EventField<'a> {
    #[default]
    Absent,
    Object(RawEvent<'a>),
    /// Null or any other type.
    Other,
}

/// A queue message's object: the envelope's own fields and, for a bare event published by
/// another producer, the event's fields at the top.
#[derive(Debug, Default)]
pub(super) struct RawEnvelope<'a> {
    pub(super) trace_id: Text<'a>,
    pub(super) rejected: Text<'a>,
    pub(super) event: EventField<'a>,
    pub(super) top: RawEvent<'a>,
}

/// The top of a document: an object of `T`'s fields, or any other JSON value.
#[derive(Debug)]
pub(super) enum Top<T> {
    Object(T),
    NotObject,
}

/// Decodes `T` (an event, an envelope) from JSON bytes, parsing them once.
///
/// # Errors
/// The parser's syntax errors only (every shape of value is captured, not refused).
pub(super) fn from_slice<'a, T: Fields<'a>>(bytes: &'a [u8]) -> serde_json::Result<Top<T>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let top = Captured::<Top<T>>::deserialize(&mut de)?.0;
    de.end()?;
    Ok(top)
}

/// Decodes `T` from a JSON value already built (tests and tools).
pub(super) fn from_value<'a, T: Fields<'a>>(value: &'a Value) -> Top<T> {
    match Captured::<Top<T>>::deserialize(value) {
        Ok(captured) => captured.0,
        // Unreachable: the visitors accept every value a `Value` can hold.
        Err(_) => Top::NotObject,
    }
}

// ------------------------------------------------------------------ the capture machinery

/// How a slot takes each JSON shape; whatever a slot does not take becomes `other()`, with
/// the value walked (and so syntax-checked and depth-limited) by [`Skip`].
trait Capture<'de>: Sized {
    fn other() -> Self;
    fn null() -> Self {
        Self::other()
    }
    fn text(_s: Cow<'de, str>) -> Self {
        Self::other()
    }
    fn number(_n: Num) -> Self {
        Self::other()
    }
    fn seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Captured<Skip>>()?.is_some() {}
        Ok(Self::other())
    }
    fn map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map
            .next_entry::<Captured<Skip>, Captured<Skip>>()?
            .is_some()
        {}
        Ok(Self::other())
    }
}

/// A [`Capture`] as a serde `Deserialize` (a blanket impl on `T` itself is not allowed).
struct Captured<T>(T);

impl<'de, T: Capture<'de>> Deserialize<'de> for Captured<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CaptureVisitor(PhantomData))
    }
}

struct CaptureVisitor<T>(PhantomData<T>);

impl<'de, T: Capture<'de>> Visitor<'de> for CaptureVisitor<T> {
    type Value = Captured<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Captured(T::other()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        // serde_json reports only negative integers here; a `Value` may hold any i64.
        Ok(Captured(T::number(match u64::try_from(v) {
            Ok(u) => Num::U(u),
            Err(_) => Num::I(v),
        })))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Captured(T::number(Num::U(v))))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Captured(T::number(Num::F(v))))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Captured(T::text(Cow::Borrowed(v))))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Captured(T::text(Cow::Owned(v.to_owned()))))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Captured(T::text(Cow::Owned(v))))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Captured(T::null()))
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Captured(T::null()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        T::seq(seq).map(Captured)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::map(map).map(Captured)
    }
}

/// Any value, walked and dropped.
struct Skip;

impl Capture<'_> for Skip {
    fn other() -> Self {
        Skip
    }
}

impl<'de> Capture<'de> for Text<'de> {
    fn other() -> Self {
        Text::Other
    }
    fn null() -> Self {
        Text::Null
    }
    fn text(s: Cow<'de, str>) -> Self {
        Text::Str(s)
    }
}

impl Capture<'_> for Numeric {
    fn other() -> Self {
        Numeric::Other
    }
    fn null() -> Self {
        Numeric::Null
    }
    fn number(n: Num) -> Self {
        Numeric::Num(n)
    }
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => Object::Null,
            Value::Object(m) => Object::Map(m),
            _ => Object::Other,
        })
    }
}

impl<'de> Capture<'de> for Metrics<'de> {
    fn other() -> Self {
        Metrics::Other
    }
    fn seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
        while items.len() < MAX_METRICS {
            match seq.next_element::<Captured<MetricItem<'de>>>()? {
                Some(item) => items.push(item.0),
                None => return Ok(Metrics::Items(items)),
            }
        }
        // At the limit: the rest only counted, for an exact message.
        let mut count = items.len();
        while seq.next_element::<Captured<Skip>>()?.is_some() {
            count += 1;
        }
        Ok(if count > MAX_METRICS {
            Metrics::TooMany(count)
        } else {
            Metrics::Items(items)
        })
    }
}

impl<'de> Capture<'de> for MetricItem<'de> {
    fn other() -> Self {
        MetricItem::Other
    }
    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        RawMetric::fields(map).map(MetricItem::Object)
    }
}

impl<'de> Capture<'de> for EventField<'de> {
    fn other() -> Self {
        EventField::Other
    }
    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        RawEvent::fields(map).map(EventField::Object)
    }
}

impl<'de, T: Fields<'de>> Capture<'de> for Top<T> {
    fn other() -> Self {
        Top::NotObject
    }
    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        T::fields(map).map(Top::Object)
    }
}

/// An object read field by field into a struct of slots.
pub(super) trait Fields<'de>: Sized {
    fn fields<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

/// Reads an object key as `K` without copying it (`name` maps a key to its field).
struct KeySeed<K>(fn(&str) -> K);

impl<'de, K> DeserializeSeed<'de> for KeySeed<K> {
    type Value = K;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K, D::Error> {
        d.deserialize_str(self)
    }
}

impl<K> Visitor<'_> for KeySeed<K> {
    type Value = K;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<K, E> {
        Ok((self.0)(v))
    }
}

/// Takes the next value of `map` into a slot.
fn slot<'de, T: Capture<'de>, A: MapAccess<'de>>(map: &mut A) -> Result<T, A::Error> {
    Ok(map.next_value::<Captured<T>>()?.0)
}

fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<Captured<Skip>>().map(|_| ())
}

enum MetricKey {
    ParameterKey,
    Value,
    Quality,
    Attributes,
    Unknown,
}

fn metric_key(k: &str) -> MetricKey {
    match k {
        "parameter_key" => MetricKey::ParameterKey,
        "value" => MetricKey::Value,
        "quality" => MetricKey::Quality,
        "attributes" => MetricKey::Attributes,
        _ => MetricKey::Unknown,
    }
}

impl<'de> Fields<'de> for RawMetric<'de> {
    fn fields<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut m = RawMetric::default();
        while let Some(k) = map.next_key_seed(KeySeed(metric_key))? {
            match k {
                MetricKey::ParameterKey => m.parameter_key = slot(&mut map)?,
                MetricKey::Value => m.value = slot(&mut map)?,
                MetricKey::Quality => m.quality = slot(&mut map)?,
                MetricKey::Attributes => m.attributes = map.next_value()?,
                MetricKey::Unknown => skip(&mut map)?,
            }
        }
        Ok(m)
    }
}

/// The keys of an event and of an envelope (one list: a bare event is an envelope's top).
enum EventKey {
    ProjectId,
    SiteId,
    DeviceId,
    Protocol,
    SourceTimestamp,
    Metrics,
    ConfigVersion,
    EventId,
    Metadata,
    TraceId,
    Rejected,
    Event,
    Unknown,
}

fn event_key(k: &str) -> EventKey {
    match k {
        "project_id" => EventKey::ProjectId,
        "site_id" => EventKey::SiteId,
        "device_id" => EventKey::DeviceId,
        "protocol" => EventKey::Protocol,
        "source_timestamp" => EventKey::SourceTimestamp,
        "metrics" => EventKey::Metrics,
        "config_version" => EventKey::ConfigVersion,
        "event_id" => EventKey::EventId,
        "metadata" => EventKey::Metadata,
        "trace_id" => EventKey::TraceId,
        "rejected" => EventKey::Rejected,
        "event" => EventKey::Event,
        _ => EventKey::Unknown,
    }
}

/// Reads one event field into `e`; false when `k` is no field of the event model.
fn event_field<'de, A: MapAccess<'de>>(
    e: &mut RawEvent<'de>,
    k: &EventKey,
    map: &mut A,
) -> Result<bool, A::Error> {
    match k {
        EventKey::ProjectId => e.project_id = slot(map)?,
        EventKey::SiteId => e.site_id = slot(map)?,
        EventKey::DeviceId => e.device_id = slot(map)?,
        EventKey::Protocol => e.protocol = slot(map)?,
        EventKey::SourceTimestamp => e.source_timestamp = slot(map)?,
        EventKey::Metrics => e.metrics = slot(map)?,
        EventKey::ConfigVersion => e.config_version = slot(map)?,
        EventKey::EventId => e.event_id = slot(map)?,
        EventKey::Metadata => e.metadata = map.next_value()?,
        EventKey::TraceId | EventKey::Rejected | EventKey::Event | EventKey::Unknown => {
            return Ok(false);
        }
    }
    Ok(true)
}

impl<'de> Fields<'de> for RawEvent<'de> {
    fn fields<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut e = RawEvent::default();
        while let Some(k) = map.next_key_seed(KeySeed(event_key))? {
            if !event_field(&mut e, &k, &mut map)? {
                skip(&mut map)?;
            }
        }
        Ok(e)
    }
}

impl<'de> Fields<'de> for RawEnvelope<'de> {
    fn fields<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut env = RawEnvelope::default();
        while let Some(k) = map.next_key_seed(KeySeed(event_key))? {
            match k {
                EventKey::TraceId => env.trace_id = slot(&mut map)?,
                EventKey::Rejected => env.rejected = slot(&mut map)?,
                EventKey::Event => env.event = slot(&mut map)?,
                EventKey::Unknown => skip(&mut map)?,
                _ => {
                    event_field(&mut env.top, &k, &mut map)?;
                }
            }
        }
        Ok(env)
    }
}
