//! The queue message body: `{"trace_id":..,"event":{..},"config_version":..}` (the seed's
//! format). Encoded by the collector, decoded and fully re-checked by the worker, since
//! other producers may publish straight to the subject.
