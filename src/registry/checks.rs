//! The business checks of DESIGN.md §7 on an in-memory snapshot of the registry: device
//! exists and is active, project and site match, every parameter key is a template, and
//! (strict mode) a template of the device's own project, so no customer writes rows under
//! another customer's parameters.

use std::collections::HashMap;

use uuid::Uuid;

use crate::config::ValidationMode;
use crate::event::NormalizedEvent;

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
    /// Every parameter key, with the project its template belongs to (see
    /// [`template_project`](super::template_project)); None when the template names no
    /// project, which strict mode then lets no device use.
    pub parameters: HashMap<String, Option<Uuid>>,
}

/// Why an event failed the business checks. All of these may heal (an import of the missing
/// device or template), so the worker retries them before dead-lettering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckFailure {
    /// `device_not_found`, `parameter_not_found`, `parameter_not_in_project` or
    /// `validation_error`.
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
            let key = m.parameter_key();
            let Some(owner) = self.parameters.get(key) else {
                return Err(CheckFailure {
                    error_type: "parameter_not_found",
                    reason: format!(
                        "metrics[{i}].parameter_key: `{key}` is not a parameter template"
                    ),
                });
            };
            // Lenient mode skips ownership checks, this one included: a key of any project
            // is accepted, as before tenant isolation.
            if mode == ValidationMode::Strict && *owner != Some(device.project_id) {
                // Ids only: never another customer's or project's name.
                let whose = match owner {
                    Some(p) => format!("a template of project {p}"),
                    None => "a template of no project".to_string(),
                };
                return Err(CheckFailure {
                    error_type: "parameter_not_in_project",
                    reason: format!(
                        "metrics[{i}].parameter_key: `{key}` is {whose}, not of project {} of device {}",
                        device.project_id,
                        event.device_id()
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::demo_ids;

    const C1: Uuid = demo_ids::PROJECT_01;

    fn c2() -> Uuid {
        demo_ids::project(2)
    }

    fn key(project: Uuid, name: &str) -> String {
        format!("project:{project}:{name}")
    }

    /// Devices of customers 01 and 02, each project with its own `voltage` template, and
    /// one template that names no project.
    fn snapshot() -> RegistrySnapshot {
        let mut s = RegistrySnapshot::default();
        for n in [1, 2] {
            s.devices.insert(
                demo_ids::device(n, 1),
                DeviceInfo {
                    site_id: demo_ids::site(n),
                    project_id: demo_ids::project(n),
                    status: "active".into(),
                },
            );
        }
        s.parameters.insert(key(C1, "voltage"), Some(C1));
        s.parameters.insert(key(c2(), "voltage"), Some(c2()));
        s.parameters.insert("orphan".into(), None);
        s
    }

    fn event(n: u32, keys: &[&str]) -> NormalizedEvent {
        let metrics: Vec<_> = keys
            .iter()
            .map(|k| json!({"parameter_key": k, "value": 1.0}))
            .collect();
        let body = json!({
            "project_id": demo_ids::project(n), "site_id": demo_ids::site(n),
            "device_id": demo_ids::device(n, 1), "protocol": "GPRS",
            "source_timestamp": "2025-11-14T12:00:00Z", "metrics": metrics,
        });
        NormalizedEvent::parse(body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn each_device_may_use_its_own_projects_keys() {
        let s = snapshot();
        let own1 = key(C1, "voltage");
        let own2 = key(c2(), "voltage");
        assert_eq!(s.check(&event(1, &[&own1]), ValidationMode::Strict), Ok(()));
        assert_eq!(s.check(&event(2, &[&own2]), ValidationMode::Strict), Ok(()));
    }

    #[test]
    fn another_projects_key_is_refused_in_both_directions() {
        let s = snapshot();
        let k1 = key(C1, "voltage");
        let k2 = key(c2(), "voltage");
        // Customer 02's device with Customer 01's key, after one of its own.
        let f = s
            .check(&event(2, &[&k2, &k1]), ValidationMode::Strict)
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(f.error_type, "parameter_not_in_project");
        assert_eq!(
            f.reason,
            format!(
                "metrics[1].parameter_key: `{k1}` is a template of project {C1}, not of project {} of device {}",
                c2(),
                demo_ids::device(2, 1)
            )
        );
        // And the other way round.
        let f = s
            .check(&event(1, &[&k2]), ValidationMode::Strict)
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(f.error_type, "parameter_not_in_project");
        assert!(
            f.reason.starts_with("metrics[0].parameter_key: "),
            "{}",
            f.reason
        );
        assert!(!f.reason.contains("Customer"), "ids only: {}", f.reason);
    }

    #[test]
    fn a_template_of_no_project_is_nobodys_in_strict_mode() {
        let s = snapshot();
        let f = s
            .check(&event(1, &["orphan"]), ValidationMode::Strict)
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(f.error_type, "parameter_not_in_project");
        assert!(
            f.reason.contains("a template of no project"),
            "{}",
            f.reason
        );
    }

    #[test]
    fn lenient_mode_checks_only_that_the_key_exists() {
        let s = snapshot();
        let k1 = key(C1, "voltage");
        assert_eq!(
            s.check(&event(2, &[&k1, "orphan"]), ValidationMode::Lenient),
            Ok(())
        );
        let f = s
            .check(&event(2, &["missing"]), ValidationMode::Lenient)
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(f.error_type, "parameter_not_found");
    }

    #[test]
    fn an_unknown_key_is_not_found_before_ownership_is_asked() {
        let s = snapshot();
        let f = s
            .check(&event(2, &["project:x:missing"]), ValidationMode::Strict)
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(f.error_type, "parameter_not_found");
    }
}
