//! The registry tables of the SQLite store: idempotent import, export, and the snapshot the
//! worker's registry cache loads.
//!
//! Import upserts by id (parameter templates by their key) in one transaction, parents
//! before children, and checks every reference itself so that an error names the table
//! and row (`devices: device `X` (id …) refers to site … which does not exist`) instead of
//! SQLite's bare "FOREIGN KEY constraint failed".

use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use uuid::Uuid;

use super::{classify, parse_uuid};
use crate::registry::{
    Customer, Device, DeviceInfo, ImportReport, ParameterTemplate, Project, RegistryDoc,
    RegistrySnapshot, Site, template_project,
};
use crate::store::StoreError;

/// Reads devices (with their site's project) and parameter keys (with their template's
/// project), in one read transaction so the two lists agree.
pub(super) fn load(conn: &mut Connection) -> Result<RegistrySnapshot, StoreError> {
    let tx = conn.transaction().map_err(classify)?;
    // Each row is read on its own: one the loader cannot read (a NULL, a value of another
    // type, an id that is not a UUID) is skipped with an error log instead of failing every
    // load; the device is then unknown and only its events wait.
    let devices = collect(
        &tx,
        "SELECT d.id, d.site_id, s.project_id, d.status \
         FROM devices d JOIN sites s ON s.id = d.site_id",
        |r| Ok(device_row(r)),
    )?;
    let keys = collect(&tx, "SELECT key, metadata FROM parameter_templates", |r| {
        Ok(template_row(r))
    })?;
    let mut snapshot = RegistrySnapshot::default();
    for (i, row) in devices.into_iter().enumerate() {
        match row {
            Ok((id, info)) => {
                snapshot.devices.insert(id, info);
            }
            Err(e) => tracing::error!(row = i, error = %e,
                "registry: skipping a device row that cannot be read"),
        }
    }
    for (i, key) in keys.into_iter().enumerate() {
        match key {
            Ok((key, project)) => {
                snapshot.parameters.insert(key, project);
            }
            Err(e) => tracing::error!(row = i, error = %e,
                "registry: skipping a parameter template row that cannot be read"),
        }
    }
    Ok(snapshot)
}

/// One template row of the snapshot query: its key and project. The metadata is parsed
/// here, not by SQLite's `json_extract`, so one row of invalid JSON cannot fail the load
/// (its project then comes from the key alone).
fn template_row(r: &rusqlite::Row<'_>) -> Result<(String, Option<Uuid>), String> {
    let key = r
        .get::<_, String>(0)
        .map_err(|e| format!("column 0: {e}"))?;
    let metadata = r.get::<_, Option<String>>(1).ok().flatten();
    let meta: Option<serde_json::Value> = metadata.and_then(|m| serde_json::from_str(&m).ok());
    let meta_project = meta.as_ref().and_then(|m| m["project_id"].as_str());
    let project = template_project(&key, meta_project);
    Ok((key, project))
}

/// One device row of the snapshot query, or why it cannot be read.
fn device_row(r: &rusqlite::Row<'_>) -> Result<(Uuid, DeviceInfo), String> {
    let text = |i: usize| {
        r.get::<_, String>(i)
            .map_err(|e| format!("column {i}: {e}"))
    };
    let uuid =
        |i: usize| text(i).and_then(|s| parse_uuid(&s).map_err(|e| format!("column {i}: {e}")));
    Ok((
        uuid(0)?,
        DeviceInfo {
            site_id: uuid(1)?,
            project_id: uuid(2)?,
            status: text(3)?,
        },
    ))
}

/// Writes the document: inserts what is new, updates what exists, all or nothing.
///
/// # Errors
/// [`StoreError::Invalid`] naming the table and row for a dangling reference or a unique
/// value already used by another row; the classified SQLite error otherwise.
pub(super) fn import(conn: &mut Connection, doc: &RegistryDoc) -> Result<ImportReport, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(classify)?;
    let report = ImportReport {
        customers: import_customers(&tx, &doc.customers)?,
        projects: import_projects(&tx, &doc.projects)?,
        sites: import_sites(&tx, &doc.sites)?,
        devices: import_devices(&tx, &doc.devices)?,
        parameter_templates: import_templates(&tx, &doc.parameter_templates)?,
    };
    tx.commit().map_err(classify)?;
    Ok(report)
}

fn import_customers(tx: &Transaction<'_>, customers: &[Customer]) -> Result<u64, StoreError> {
    let mut written = 0;
    for c in customers {
        let what = format!("customer `{}` (id {})", c.name, c.id);
        written += tx
            .prepare_cached(
                "INSERT INTO customers (id, name, metadata) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, metadata = excluded.metadata",
            )
            .and_then(|mut s| s.execute(params![c.id.to_string(), c.name, json(&c.metadata)?]))
            .map_err(|e| row_error(e, "customers", &what))? as u64;
    }
    // Parents in a second pass: a customer may name a parent that comes later in the file.
    for c in customers {
        if let Some(parent) = c.parent_customer_id
            && !exists(tx, "customers", parent)?
        {
            return Err(StoreError::Invalid(format!(
                "customers: customer `{}` (id {}) refers to parent customer {parent} which \
                 does not exist",
                c.name, c.id
            )));
        }
        tx.prepare_cached("UPDATE customers SET parent_customer_id = ?2 WHERE id = ?1")
            .and_then(|mut s| {
                s.execute(params![
                    c.id.to_string(),
                    c.parent_customer_id.map(|p| p.to_string())
                ])
            })
            .map_err(classify)?;
    }
    Ok(written)
}

fn import_projects(tx: &Transaction<'_>, projects: &[Project]) -> Result<u64, StoreError> {
    let mut written = 0;
    for p in projects {
        let what = format!("project `{}` (id {})", p.name, p.id);
        if !exists(tx, "customers", p.customer_id)? {
            return Err(dangling("projects", &what, "customer", p.customer_id));
        }
        written += tx
            .prepare_cached(
                "INSERT INTO projects (id, customer_id, name, description) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, \
                 name = excluded.name, description = excluded.description",
            )
            .and_then(|mut s| {
                s.execute(params![
                    p.id.to_string(),
                    p.customer_id.to_string(),
                    p.name,
                    p.description
                ])
            })
            .map_err(|e| row_error(e, "projects", &what))? as u64;
    }
    Ok(written)
}

fn import_sites(tx: &Transaction<'_>, sites: &[Site]) -> Result<u64, StoreError> {
    let mut written = 0;
    for s in sites {
        let what = format!("site `{}` (id {})", s.name, s.id);
        if !exists(tx, "projects", s.project_id)? {
            return Err(dangling("sites", &what, "project", s.project_id));
        }
        written += tx
            .prepare_cached(
                "INSERT INTO sites (id, project_id, name, location) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET project_id = excluded.project_id, \
                 name = excluded.name, location = excluded.location",
            )
            .and_then(|mut st| {
                st.execute(params![
                    s.id.to_string(),
                    s.project_id.to_string(),
                    s.name,
                    json(&s.location)?
                ])
            })
            .map_err(|e| row_error(e, "sites", &what))? as u64;
    }
    Ok(written)
}

fn import_devices(tx: &Transaction<'_>, devices: &[Device]) -> Result<u64, StoreError> {
    let mut written = 0;
    for d in devices {
        let what = format!("device `{}` (id {})", d.name, d.id);
        if !exists(tx, "sites", d.site_id)? {
            return Err(dangling("devices", &what, "site", d.site_id));
        }
        written += tx
            .prepare_cached(
                "INSERT INTO devices (id, site_id, name, device_type, external_id, status) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (id) DO UPDATE SET site_id = excluded.site_id, \
                 name = excluded.name, device_type = excluded.device_type, \
                 external_id = excluded.external_id, status = excluded.status",
            )
            .and_then(|mut s| {
                s.execute(params![
                    d.id.to_string(),
                    d.site_id.to_string(),
                    d.name,
                    d.device_type,
                    d.external_id,
                    d.status
                ])
            })
            .map_err(|e| row_error(e, "devices", &what))? as u64;
    }
    Ok(written)
}

fn import_templates(
    tx: &Transaction<'_>,
    templates: &[ParameterTemplate],
) -> Result<u64, StoreError> {
    let mut written = 0;
    for t in templates {
        let what = format!("parameter template `{}`", t.key);
        // Keyed by `key`: the id is only made up for a new template and kept afterwards.
        written += tx
            .prepare_cached(
                "INSERT INTO parameter_templates (id, key, name, unit, metadata) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (key) DO UPDATE SET name = excluded.name, unit = excluded.unit, \
                 metadata = excluded.metadata",
            )
            .and_then(|mut s| {
                s.execute(params![
                    Uuid::new_v4().to_string(),
                    t.key,
                    t.name,
                    t.unit,
                    json(&t.metadata)?
                ])
            })
            .map_err(|e| row_error(e, "parameter_templates", &what))? as u64;
    }
    Ok(written)
}

/// The whole registry in the import format, each table ordered by name (templates by
/// key), so an export is stable and diffable.
pub(super) fn export(conn: &mut Connection) -> Result<RegistryDoc, StoreError> {
    let tx = conn.transaction().map_err(classify)?;
    let customers: Vec<(String, String, String, Option<String>)> = collect(
        &tx,
        "SELECT id, name, metadata, parent_customer_id FROM customers ORDER BY name, id",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let projects: Vec<(String, String, String, Option<String>)> = collect(
        &tx,
        "SELECT id, customer_id, name, description FROM projects ORDER BY name, id",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let sites: Vec<(String, String, String, String)> = collect(
        &tx,
        "SELECT id, project_id, name, location FROM sites ORDER BY name, id",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    type DeviceRow = (String, String, String, String, Option<String>, String);
    let devices: Vec<DeviceRow> = collect(
        &tx,
        "SELECT id, site_id, name, device_type, external_id, status FROM devices \
         ORDER BY name, id",
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        },
    )?;
    let templates: Vec<(String, String, Option<String>, String)> = collect(
        &tx,
        "SELECT key, name, unit, metadata FROM parameter_templates ORDER BY key",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let mut doc = RegistryDoc::default();
    for (id, name, metadata, parent) in customers {
        doc.customers.push(Customer {
            id: parse_uuid(&id)?,
            metadata: parse_json(&metadata, "customers", &name)?,
            parent_customer_id: parent.as_deref().map(parse_uuid).transpose()?,
            name,
        });
    }
    for (id, customer_id, name, description) in projects {
        doc.projects.push(Project {
            id: parse_uuid(&id)?,
            customer_id: parse_uuid(&customer_id)?,
            name,
            description,
        });
    }
    for (id, project_id, name, location) in sites {
        doc.sites.push(Site {
            id: parse_uuid(&id)?,
            project_id: parse_uuid(&project_id)?,
            location: parse_json(&location, "sites", &name)?,
            name,
        });
    }
    for (id, site_id, name, device_type, external_id, status) in devices {
        doc.devices.push(Device {
            id: parse_uuid(&id)?,
            site_id: parse_uuid(&site_id)?,
            name,
            device_type,
            external_id,
            status,
        });
    }
    for (key, name, unit, metadata) in templates {
        doc.parameter_templates.push(ParameterTemplate {
            metadata: parse_json(&metadata, "parameter_templates", &key)?,
            key,
            name,
            unit,
        });
    }
    Ok(doc)
}

/// Runs a query and collects its rows.
fn collect<T>(
    tx: &Transaction<'_>,
    sql: &str,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = tx.prepare_cached(sql).map_err(classify)?;
    let rows = stmt
        .query_map([], map)
        .map_err(classify)?
        .collect::<rusqlite::Result<Vec<T>>>()
        .map_err(classify)?;
    Ok(rows)
}

/// Whether `table` (one of the registry tables, never user input) has a row with this id.
fn exists(tx: &Transaction<'_>, table: &'static str, id: Uuid) -> Result<bool, StoreError> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE id = ?1)"
        ))
        .map_err(classify)?;
    stmt.query_row([id.to_string()], |r| r.get(0))
        .map_err(classify)
}

fn dangling(table: &str, what: &str, parent: &str, id: Uuid) -> StoreError {
    StoreError::Invalid(format!(
        "{table}: {what} refers to {parent} {id} which does not exist"
    ))
}

/// A refused row, named: a unique clash becomes "(site_id, name) is already used by
/// another row"; other constraint failures keep SQLite's sentence; infrastructure errors
/// keep their class.
fn row_error(e: rusqlite::Error, table: &str, what: &str) -> StoreError {
    match classify(e) {
        StoreError::Data(refusal) => {
            let msg = refusal.message;
            let detail = match msg.strip_prefix("UNIQUE constraint failed: ") {
                Some(cols) => {
                    let cols: Vec<&str> = cols
                        .split(", ")
                        .map(|c| c.rsplit('.').next().unwrap_or(c))
                        .collect();
                    match cols.as_slice() {
                        [one] => format!("{one} is already used by another row"),
                        many => format!("({}) is already used by another row", many.join(", ")),
                    }
                }
                None => msg,
            };
            StoreError::Invalid(format!("{table}: {what}: {detail}"))
        }
        other => other,
    }
}

/// JSON to bind as TEXT. Serialising a `Value` cannot fail (its map keys are strings);
/// the error is carried rather than unwrapped all the same.
fn json(v: &serde_json::Value) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn parse_json(text: &str, table: &str, row: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Other(format!("{table}: `{row}` holds invalid JSON: {e}")))
}
