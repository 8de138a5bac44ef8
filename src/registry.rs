//! The registry as the worker sees it: devices, their site and project, and parameter keys.
//!
//! [`RegistryDoc`] is the import/export format (`nsready registry import|export`);
//! [`demo`] builds the platform's demo registry with fixed UUIDs; [`RegistryCache`] keeps a
//! snapshot in memory for the worker's business checks (DESIGN.md §7), refreshed
//! periodically and on a miss (at most once per [`MISS_REFRESH_MIN`]), so imports are seen
//! without a restart. The store reads and writes the tables; this module never touches SQL.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::ValidationMode;
use crate::event::NormalizedEvent;
use crate::store::{Store, StoreError};

/// Shortest interval between two refreshes forced by misses.
pub const MISS_REFRESH_MIN: Duration = Duration::from_secs(1);

/// A customer (tenant).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub id: Uuid,
    pub name: String,
    #[serde(default = "empty_object")]
    pub metadata: serde_json::Value,
    #[serde(default)]
    pub parent_customer_id: Option<Uuid>,
}

/// A project of a customer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// A site of a project.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    #[serde(default = "empty_object")]
    pub location: serde_json::Value,
}

/// A device at a site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: Uuid,
    pub site_id: Uuid,
    pub name: String,
    pub device_type: String,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default = "active")]
    pub status: String,
}

/// A parameter template; `key` is `project:<project uuid>:<name>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterTemplate {
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default = "empty_object")]
    pub metadata: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn active() -> String {
    "active".to_string()
}

/// The import/export document: every registry table the worker depends on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryDoc {
    #[serde(default)]
    pub customers: Vec<Customer>,
    #[serde(default)]
    pub projects: Vec<Project>,
    #[serde(default)]
    pub sites: Vec<Site>,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub parameter_templates: Vec<ParameterTemplate>,
}

impl RegistryDoc {
    /// Parses an import file.
    ///
    /// # Errors
    /// A message with the line and column and what was expected, or the first row whose
    /// fields break a rule (`devices[2].name: must not be empty`).
    pub fn parse(text: &str) -> Result<RegistryDoc, String> {
        let doc: RegistryDoc = serde_json::from_str(text).map_err(|e| {
            format!(
                "registry file is not valid (line {}, column {}): {e}",
                e.line(),
                e.column()
            )
        })?;
        doc.check()?;
        Ok(doc)
    }

    /// Checks the rules serde cannot: non-empty names and keys.
    fn check(&self) -> Result<(), String> {
        let empty = |table: &str, i: usize, field: &str, v: &str| {
            if v.trim().is_empty() {
                Err(format!("{table}[{i}].{field}: must not be empty"))
            } else {
                Ok(())
            }
        };
        for (i, c) in self.customers.iter().enumerate() {
            empty("customers", i, "name", &c.name)?;
        }
        for (i, p) in self.projects.iter().enumerate() {
            empty("projects", i, "name", &p.name)?;
        }
        for (i, s) in self.sites.iter().enumerate() {
            empty("sites", i, "name", &s.name)?;
        }
        for (i, d) in self.devices.iter().enumerate() {
            empty("devices", i, "name", &d.name)?;
            empty("devices", i, "device_type", &d.device_type)?;
        }
        for (i, t) in self.parameter_templates.iter().enumerate() {
            empty("parameter_templates", i, "key", &t.key)?;
            empty("parameter_templates", i, "name", &t.name)?;
        }
        Ok(())
    }
}

/// Counts of what an import wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub customers: u64,
    pub projects: u64,
    pub sites: u64,
    pub devices: u64,
    pub parameter_templates: u64,
}

/// Where a device belongs, as the business checks need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub site_id: Uuid,
    pub project_id: Uuid,
    pub status: String,
}

/// The registry in memory.
#[derive(Clone, Debug, Default)]
pub struct RegistrySnapshot {
    pub devices: HashMap<Uuid, DeviceInfo>,
    pub parameters: HashSet<String>,
}

/// Why an event failed the business checks. All of these may heal (an import of the missing
/// device or template), so the worker retries them before dead-lettering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckFailure {
    /// `device_not_found`, `parameter_not_found` or `validation_error`.
    pub error_type: &'static str,
    pub reason: String,
}

impl RegistrySnapshot {
    /// Runs the business checks of DESIGN.md §7 on one event.
    ///
    /// # Errors
    /// The first failed check, naming the field.
    pub fn check(&self, event: &NormalizedEvent, mode: ValidationMode) -> Result<(), CheckFailure> {
        let Some(device) = self.devices.get(&event.device_id()) else {
            return Err(CheckFailure {
                error_type: "device_not_found",
                reason: format!(
                    "device_id: device {} is not in the registry",
                    event.device_id()
                ),
            });
        };
        if device.status != "active" {
            return Err(CheckFailure {
                error_type: "validation_error",
                reason: format!(
                    "device_id: device {} is {}, not active",
                    event.device_id(),
                    device.status
                ),
            });
        }
        if mode == ValidationMode::Strict {
            if device.project_id != event.project_id() {
                return Err(CheckFailure {
                    error_type: "validation_error",
                    reason: format!(
                        "project_id: device {} belongs to project {}, not {}",
                        event.device_id(),
                        device.project_id,
                        event.project_id()
                    ),
                });
            }
            if device.site_id != event.site_id() {
                return Err(CheckFailure {
                    error_type: "validation_error",
                    reason: format!(
                        "site_id: device {} belongs to site {}, not {}",
                        event.device_id(),
                        device.site_id,
                        event.site_id()
                    ),
                });
            }
        }
        for (i, m) in event.metrics().iter().enumerate() {
            if !self.parameters.contains(m.parameter_key()) {
                return Err(CheckFailure {
                    error_type: "parameter_not_found",
                    reason: format!(
                        "metrics[{i}].parameter_key: `{}` is not a parameter template",
                        m.parameter_key()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The worker's registry cache: a snapshot plus the refresh policy.
#[derive(Clone)]
pub struct RegistryCache<S> {
    store: S,
    mode: ValidationMode,
    snapshot: Arc<RwLock<Arc<RegistrySnapshot>>>,
    /// When the snapshot was last loaded; guards the miss-refresh rate limit.
    loaded_at: Arc<Mutex<Option<Instant>>>,
    /// Periodic refresh even without misses, so deletions and deactivations are seen.
    max_age: Duration,
}

impl<S: Store> RegistryCache<S> {
    /// An empty cache; the first check loads it.
    pub fn new(store: S, mode: ValidationMode, max_age: Duration) -> Self {
        RegistryCache {
            store,
            mode,
            snapshot: Arc::new(RwLock::new(Arc::new(RegistrySnapshot::default()))),
            loaded_at: Arc::new(Mutex::new(None)),
            max_age,
        }
    }

    fn current(&self) -> Arc<RegistrySnapshot> {
        match self.snapshot.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Age of the snapshot, or None when never loaded.
    fn age(&self) -> Option<Duration> {
        let guard = match self.loaded_at.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.map(|t| t.elapsed())
    }

    /// Reloads the snapshot from the store.
    ///
    /// # Errors
    /// The store's error (the caller treats it as transient or not).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let fresh = self.store.load_registry().await?;
        match self.snapshot.write() {
            Ok(mut g) => *g = Arc::new(fresh),
            Err(p) => *p.into_inner() = Arc::new(fresh),
        }
        match self.loaded_at.lock() {
            Ok(mut g) => *g = Some(Instant::now()),
            Err(p) => *p.into_inner() = Some(Instant::now()),
        }
        Ok(())
    }

    /// Checks a batch of events. A miss forces one refresh (rate-limited) and a second
    /// look, so an event for a device imported a moment ago passes.
    ///
    /// # Errors
    /// Only when the registry cannot be loaded at all (store unavailable).
    pub async fn check_all(
        &self,
        events: &[&NormalizedEvent],
    ) -> Result<Vec<Result<(), CheckFailure>>, StoreError> {
        match self.age() {
            None => self.refresh().await?,
            Some(age) if age >= self.max_age => self.refresh().await?,
            _ => {}
        }
        let snap = self.current();
        let mut results: Vec<_> = events.iter().map(|e| snap.check(e, self.mode)).collect();
        if results.iter().any(Result::is_err) && self.age().is_some_and(|a| a >= MISS_REFRESH_MIN) {
            self.refresh().await?;
            let snap = self.current();
            for (r, e) in results.iter_mut().zip(events) {
                if r.is_err() {
                    *r = snap.check(e, self.mode);
                }
            }
        }
        Ok(results)
    }
}

/// Fixed ids of the demo registry: Customer 01 uses the ids of the platform's payload
/// example, so that example can be posted as it is.
pub mod demo_ids {
    use uuid::Uuid;

    /// Project of Customer 01 (the platform's example `project_id`).
    pub const PROJECT_01: Uuid = Uuid::from_u128(0x8212caa2_b928_4213_b64e_9f5b86f4cad1);
    /// Site of Customer 01 (the platform's example `site_id`).
    pub const SITE_01: Uuid = Uuid::from_u128(0x89a66770_bdcc_4c95_ac97_e1829cb7a960);
    /// First device of Customer 01 (the platform's example `device_id`).
    pub const DEVICE_01_1: Uuid = Uuid::from_u128(0xbc2c5e47_f17e_46f0_b5e7_76b214f4f6ad);

    /// Customer NN (1..=10): `10000000-0000-4000-8000-0000000000NN`.
    pub fn customer(n: u32) -> Uuid {
        Uuid::from_u128(0x10000000_0000_4000_8000_000000000000 | u128::from(n))
    }
    /// Project of customer NN: `20000000-0000-4000-8000-0000000000NN` (NN > 1).
    pub fn project(n: u32) -> Uuid {
        if n == 1 {
            PROJECT_01
        } else {
            Uuid::from_u128(0x20000000_0000_4000_8000_000000000000 | u128::from(n))
        }
    }
    /// Site of customer NN: `30000000-0000-4000-8000-0000000000NN` (NN > 1).
    pub fn site(n: u32) -> Uuid {
        if n == 1 {
            SITE_01
        } else {
            Uuid::from_u128(0x30000000_0000_4000_8000_000000000000 | u128::from(n))
        }
    }
    /// Device K (1 or 2) of customer NN: `40000000-0000-4000-8000-00000000NN0K`.
    pub fn device(n: u32, k: u32) -> Uuid {
        if n == 1 && k == 1 {
            DEVICE_01_1
        } else {
            Uuid::from_u128(
                0x40000000_0000_4000_8000_000000000000 | (u128::from(n) << 8) | u128::from(k),
            )
        }
    }
}

/// The platform's demo registry: ten customers, each with one project, one site and two
/// devices; parameter templates voltage, current and power for Customer 01's project.
pub fn demo() -> RegistryDoc {
    let mut doc = RegistryDoc::default();
    for n in 1..=10u32 {
        let cust = format!("Customer {n:02}");
        doc.customers.push(Customer {
            id: demo_ids::customer(n),
            name: cust.clone(),
            metadata: empty_object(),
            parent_customer_id: None,
        });
        doc.projects.push(Project {
            id: demo_ids::project(n),
            customer_id: demo_ids::customer(n),
            name: format!("Project 01_Customer_{n:02}"),
            description: None,
        });
        doc.sites.push(Site {
            id: demo_ids::site(n),
            project_id: demo_ids::project(n),
            name: format!("Site 01_Customer_{n:02}"),
            location: empty_object(),
        });
        for k in 1..=2u32 {
            let name = format!("DEV_Customer_{n:02}_{k}");
            doc.devices.push(Device {
                id: demo_ids::device(n, k),
                site_id: demo_ids::site(n),
                name: name.clone(),
                device_type: "sensor".into(),
                external_id: Some(name),
                status: "active".into(),
            });
        }
    }
    let p = demo_ids::PROJECT_01;
    for (name, unit, max, required) in [
        ("voltage", "V", 240, true),
        ("current", "A", 50, true),
        ("power", "kW", 100, false),
    ] {
        doc.parameter_templates.push(ParameterTemplate {
            key: format!("project:{p}:{name}"),
            name: name.to_string(),
            unit: Some(unit.to_string()),
            metadata: serde_json::json!({
                "project_id": p.to_string(), "dtype": "float", "min": 0, "max": max, "required": required
            }),
        });
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_registry_has_the_platform_shape() {
        let d = demo();
        assert_eq!(d.customers.len(), 10);
        assert_eq!(d.projects.len(), 10);
        assert_eq!(d.sites.len(), 10);
        assert_eq!(d.devices.len(), 20);
        assert_eq!(d.parameter_templates.len(), 3);
        assert_eq!(
            d.devices[0].id.to_string(),
            "bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad"
        );
        assert_eq!(
            demo_ids::device(3, 2).to_string(),
            "40000000-0000-4000-8000-000000000302"
        );
        let ids: HashSet<Uuid> = d.devices.iter().map(|d| d.id).collect();
        assert_eq!(ids.len(), 20, "device ids are unique");
    }

    #[test]
    fn import_file_errors_name_the_row() {
        let err = RegistryDoc::parse(r#"{"devices":[{"id":"bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad","site_id":"89a66770-bdcc-4c95-ac97-e1829cb7a960","name":" ","device_type":"sensor"}]}"#)
            .err()
            .unwrap_or_default();
        assert_eq!(err, "devices[0].name: must not be empty");
        let err = RegistryDoc::parse(r#"{"devices":[{"id":"nope"}]}"#)
            .err()
            .unwrap_or_default();
        assert!(err.contains("line 1"), "{err}");
    }
}
