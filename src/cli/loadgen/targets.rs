//! Which devices loadgen sends for: active devices whose project has parameter templates,
//! read from the registry, each with the parameters its events carry (and, with
//! `--mint-tokens`, its own bearer token).

use nsready::registry::RegistryDoc;
use serde_json::Value;
use uuid::Uuid;

/// One device and the parameters its events carry.
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub(super) device: Uuid,
    pub(super) site: Uuid,
    pub(super) project: Uuid,
    /// (parameter key, unit) of the project's templates.
    pub(super) params: Vec<(String, Option<String>)>,
    /// Metrics per event for this device: min(--metrics, params).
    pub(super) per_event: usize,
    /// The device's own bearer token (`--mint-tokens`).
    pub(super) token: Option<String>,
}

/// The project id of a template key `project:<uuid>:<name>`, else of `metadata.project_id`.
fn template_project(key: &str, metadata: &Value) -> Option<Uuid> {
    key.strip_prefix("project:")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(id, _)| id.parse().ok())
        .or_else(|| metadata["project_id"].as_str().and_then(|s| s.parse().ok()))
}

/// Active devices whose project has templates, sorted by id, at most `want`.
pub(super) fn pick_targets(doc: &RegistryDoc, want: usize, metrics: usize) -> Vec<Target> {
    let mut by_project: std::collections::HashMap<Uuid, Vec<(String, Option<String>)>> =
        std::collections::HashMap::new();
    for t in &doc.parameter_templates {
        if let Some(p) = template_project(&t.key, &t.metadata) {
            by_project
                .entry(p)
                .or_default()
                .push((t.key.clone(), t.unit.clone()));
        }
    }
    for params in by_project.values_mut() {
        params.sort();
    }
    let mut devices: Vec<_> = doc
        .devices
        .iter()
        .filter(|d| d.status == "active")
        .collect();
    devices.sort_by_key(|d| d.id);
    let mut out = Vec::new();
    for d in devices {
        let Some(site) = doc.sites.iter().find(|s| s.id == d.site_id) else {
            continue;
        };
        let Some(params) = by_project.get(&site.project_id) else {
            continue;
        };
        out.push(Target {
            device: d.id,
            site: site.id,
            project: site.project_id,
            params: params.clone(),
            per_event: metrics.clamp(1, params.len()),
            token: None,
        });
        if out.len() >= want {
            break;
        }
    }
    out
}
