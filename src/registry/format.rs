//! The import/export document (`nsready registry import|export`) and its row rules.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

impl ParameterTemplate {
    /// The project this template belongs to: see [`template_project`].
    pub fn project_id(&self) -> Option<Uuid> {
        template_project(&self.key, self.metadata["project_id"].as_str())
    }
}

/// The project a parameter template belongs to, the tenant boundary of strict mode: the
/// uuid of a key `project:<uuid>:<name>` (the platform's key format), else
/// `metadata.project_id` when it is a uuid, else none. An import refuses a template whose
/// two disagree, so the order matters only for rows written by other tools.
pub fn template_project(key: &str, metadata_project_id: Option<&str>) -> Option<Uuid> {
    key_project(key).or_else(|| metadata_project_id.and_then(|s| s.trim().parse().ok()))
}

fn key_project(key: &str) -> Option<Uuid> {
    key.strip_prefix("project:")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(id, _)| id.parse().ok())
}

pub(super) fn empty_object() -> serde_json::Value {
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
            let meta = t.metadata["project_id"].as_str();
            let from_meta = meta.and_then(|s| s.trim().parse::<Uuid>().ok());
            if let (Some(k), Some(m)) = (key_project(&t.key), from_meta)
                && k != m
            {
                return Err(format!(
                    "parameter_templates[{i}].metadata.project_id: {m} is not the project {k} of key `{}`",
                    t.key
                ));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_templates_project_comes_from_its_key_then_its_metadata() {
        let p = "8212caa2-b928-4213-b64e-9f5b86f4cad1";
        let q = "20000000-0000-4000-8000-000000000002";
        let id = |s: &str| s.parse::<Uuid>().ok();
        assert_eq!(
            template_project(&format!("project:{p}:voltage"), None),
            id(p)
        );
        assert_eq!(
            template_project(&format!("project:{p}:voltage"), Some(q)),
            id(p)
        );
        assert_eq!(template_project("voltage", Some(q)), id(q));
        assert_eq!(template_project("voltage", Some("nope")), None);
        assert_eq!(template_project("project:nope:voltage", None), None);
        let doc = format!(
            r#"{{"parameter_templates":[{{"key":"project:{p}:v","name":"v","metadata":{{"project_id":"{q}"}}}}]}}"#
        );
        let err = RegistryDoc::parse(&doc).err().unwrap_or_default();
        assert!(
            err.starts_with("parameter_templates[0].metadata.project_id: "),
            "{err}"
        );
    }
}
