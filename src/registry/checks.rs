//! The business checks of DESIGN.md §7 on an in-memory snapshot of the registry: device
//! exists and is active, project and site match, every parameter key is a template.

use std::collections::{HashMap, HashSet};

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
