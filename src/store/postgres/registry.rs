//! Registry reads and writes of the PostgreSQL store: the snapshot the worker caches, and
//! import / export of [`RegistryDoc`].
//!
//! Imports write row by row (pipelined, see [`upsert_each`]) inside one transaction, so a
//! refused row is known exactly and named in the error; registries are small and imports
//! rare, unlike telemetry, which [`super::PostgresStore`] writes in bulk.

use std::collections::HashMap;

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::error::DbError;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::error::classify;
use crate::registry::{
    Customer, Device, DeviceInfo, ImportReport, ParameterTemplate, Project, RegistryDoc,
    RegistrySnapshot, Site, template_project,
};
use crate::store::StoreError;

/// Rows sent before their answers are read. Bounds the futures held at once while keeping
/// the import at about one round trip per chunk.
const PIPELINE: usize = 256;

/// Devices with their site's project, and every parameter key with its template's project.
pub(super) async fn load(client: &Client) -> Result<RegistrySnapshot, StoreError> {
    let devices_sql = "SELECT d.id, d.site_id, s.project_id, d.status \
                       FROM devices d JOIN sites s ON s.id = d.site_id";
    // `->>` on jsonb is NULL for a metadata that is not an object: no row can fail here.
    let keys_sql = "SELECT key, metadata->>'project_id' FROM parameter_templates";
    let (devices_stmt, keys_stmt) = futures::try_join!(
        client.prepare_cached(devices_sql),
        client.prepare_cached(keys_sql)
    )
    .map_err(|e| classify(&e))?;
    // Both queries go out before either answer is read (tokio-postgres pipelines concurrent
    // requests on one connection). Two snapshots a moment apart are fine for a cache.
    let (devices, keys) = futures::try_join!(
        client.query(&devices_stmt, &[]),
        client.query(&keys_stmt, &[])
    )
    .map_err(|e| classify(&e))?;
    let mut snapshot = RegistrySnapshot {
        devices: HashMap::with_capacity(devices.len()),
        parameters: HashMap::with_capacity(keys.len()),
    };
    // One row the loader cannot read (a NULL status, a column of an unexpected type) is
    // skipped with an error log: the device is then unknown, and only its events wait.
    for (i, row) in devices.iter().enumerate() {
        let read = || -> Result<(Uuid, DeviceInfo), tokio_postgres::Error> {
            let info = DeviceInfo {
                site_id: row.try_get(1)?,
                project_id: row.try_get(2)?,
                status: row.try_get(3)?,
            };
            Ok((row.try_get(0)?, info))
        };
        match read() {
            Ok((id, info)) => {
                snapshot.devices.insert(id, info);
            }
            Err(e) => tracing::error!(row = i, id = ?row.try_get::<_, Uuid>(0).ok(), error = %e,
                "registry: skipping a device row that cannot be read"),
        }
    }
    for (i, row) in keys.iter().enumerate() {
        let read = || -> Result<(String, Option<String>), tokio_postgres::Error> {
            Ok((row.try_get(0)?, row.try_get(1)?))
        };
        match read() {
            Ok((key, meta_project)) => {
                let project = template_project(&key, meta_project.as_deref());
                snapshot.parameters.insert(key, project);
            }
            Err(e) => tracing::error!(row = i, error = %e,
                "registry: skipping a parameter template row that cannot be read"),
        }
    }
    Ok(snapshot)
}

/// Upserts the whole document, parents before children, in the caller's transaction.
pub(super) async fn import(
    tx: &Transaction<'_>,
    doc: &RegistryDoc,
) -> Result<ImportReport, StoreError> {
    // Customers in two passes: a customer may name a parent that comes later in the file (or
    // each other), so parents are linked only once every customer exists.
    let customers = upsert_each(
        tx,
        "INSERT INTO customers (id, name, metadata) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, metadata = EXCLUDED.metadata",
        &doc.customers,
        |c| vec![&c.id, &c.name, &c.metadata],
        explain_customer,
    )
    .await?;
    upsert_each(
        tx,
        "UPDATE customers SET parent_customer_id = $2::uuid \
         WHERE id = $1 AND parent_customer_id IS DISTINCT FROM $2::uuid",
        &doc.customers,
        |c| vec![&c.id, &c.parent_customer_id],
        explain_customer,
    )
    .await?;
    let projects = upsert_each(
        tx,
        "INSERT INTO projects (id, customer_id, name, description) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, \
         name = EXCLUDED.name, description = EXCLUDED.description",
        &doc.projects,
        |p| vec![&p.id, &p.customer_id, &p.name, &p.description],
        explain_project,
    )
    .await?;
    let sites = upsert_each(
        tx,
        "INSERT INTO sites (id, project_id, name, location) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET project_id = EXCLUDED.project_id, \
         name = EXCLUDED.name, location = EXCLUDED.location",
        &doc.sites,
        |s| vec![&s.id, &s.project_id, &s.name, &s.location],
        explain_site,
    )
    .await?;
    let devices = upsert_each(
        tx,
        "INSERT INTO devices (id, site_id, name, device_type, external_id, status) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET site_id = EXCLUDED.site_id, name = EXCLUDED.name, \
         device_type = EXCLUDED.device_type, external_id = EXCLUDED.external_id, \
         status = EXCLUDED.status",
        &doc.devices,
        |d| {
            vec![
                &d.id,
                &d.site_id,
                &d.name,
                &d.device_type,
                &d.external_id,
                &d.status,
            ]
        },
        explain_device,
    )
    .await?;
    let parameter_templates = upsert_each(
        tx,
        "INSERT INTO parameter_templates (key, name, unit, metadata) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, unit = EXCLUDED.unit, \
         metadata = EXCLUDED.metadata",
        &doc.parameter_templates,
        |t| vec![&t.key, &t.name, &t.unit, &t.metadata],
        explain_template,
    )
    .await?;
    Ok(ImportReport {
        customers,
        projects,
        sites,
        devices,
        parameter_templates,
    })
}

/// Runs one statement per item, pipelined in chunks, and sums the rows it touched.
///
/// The first refused row in document order is the culprit: inside a transaction, every
/// statement after a failure fails too (with "transaction aborted"), so later errors are
/// only echoes.
async fn upsert_each<T: Sync>(
    tx: &Transaction<'_>,
    sql: &str,
    items: &[T],
    params: for<'a> fn(&'a T) -> Vec<&'a (dyn ToSql + Sync)>,
    explain: fn(&T, &DbError) -> String,
) -> Result<u64, StoreError> {
    if items.is_empty() {
        return Ok(0);
    }
    let stmt = tx.prepare_cached(sql).await.map_err(|e| classify(&e))?;
    let mut written = 0;
    for chunk in items.chunks(PIPELINE) {
        let results = futures::future::join_all(chunk.iter().map(|item| {
            let stmt = &stmt;
            async move { tx.execute(stmt, &params(item)).await }
        }))
        .await;
        for (item, result) in chunk.iter().zip(results) {
            written += result.map_err(|e| refused(&e, |db| explain(item, db)))?;
        }
    }
    Ok(written)
}

/// An integrity or data error becomes `Invalid` naming the row; anything else (database
/// down, deadlock) keeps its classification.
fn refused(e: &tokio_postgres::Error, explain: impl FnOnce(&DbError) -> String) -> StoreError {
    match classify(e) {
        StoreError::Data(_) => match e.as_db_error() {
            Some(db) => StoreError::Invalid(explain(db)),
            None => classify(e),
        },
        other => other,
    }
}

fn explain_customer(c: &Customer, db: &DbError) -> String {
    let what = format!("customers: customer `{}` (id {})", c.name, c.id);
    match db.constraint() {
        Some("customers_name_key") => {
            format!("{what}: the name is already used by another customer")
        }
        Some("customers_parent_customer_id_fkey") => match c.parent_customer_id {
            Some(p) => format!("{what} refers to parent customer {p} which does not exist"),
            None => format!("{what}: {}", db.message()),
        },
        _ => format!("{what}: {}", db.message()),
    }
}

fn explain_project(p: &Project, db: &DbError) -> String {
    let what = format!("projects: project `{}` (id {})", p.name, p.id);
    match db.constraint() {
        Some("projects_customer_id_fkey") => format!(
            "{what} refers to customer {} which does not exist",
            p.customer_id
        ),
        Some("projects_customer_id_name_key") => format!(
            "{what}: customer {} already has another project with this name",
            p.customer_id
        ),
        _ => format!("{what}: {}", db.message()),
    }
}

fn explain_site(s: &Site, db: &DbError) -> String {
    let what = format!("sites: site `{}` (id {})", s.name, s.id);
    match db.constraint() {
        Some("sites_project_id_fkey") => format!(
            "{what} refers to project {} which does not exist",
            s.project_id
        ),
        Some("sites_project_id_name_key") => format!(
            "{what}: project {} already has another site with this name",
            s.project_id
        ),
        _ => format!("{what}: {}", db.message()),
    }
}

fn explain_device(d: &Device, db: &DbError) -> String {
    let what = format!("devices: device `{}` (id {})", d.name, d.id);
    match db.constraint() {
        Some("devices_site_id_fkey") => {
            format!("{what} refers to site {} which does not exist", d.site_id)
        }
        Some("devices_site_id_name_key") => format!(
            "{what}: site {} already has another device with this name",
            d.site_id
        ),
        Some("devices_external_id_key") => format!(
            "{what}: external_id `{}` is already used by another device",
            d.external_id.as_deref().unwrap_or_default()
        ),
        _ => format!("{what}: {}", db.message()),
    }
}

fn explain_template(t: &ParameterTemplate, db: &DbError) -> String {
    format!(
        "parameter_templates: template `{}` (name `{}`): {}",
        t.key,
        t.name,
        db.message()
    )
}

/// The whole registry from one snapshot (the caller's repeatable-read transaction), ordered
/// by name (ids break ties) and templates by key, so exports are stable and diffable.
pub(super) async fn export(tx: &Transaction<'_>) -> Result<RegistryDoc, StoreError> {
    // COALESCE: other platform tools may leave the JSON columns NULL; the import format
    // has an object there.
    let (customers, projects, sites, devices, templates) = futures::try_join!(
        query(
            tx,
            "SELECT id, name, COALESCE(metadata, '{}'::jsonb), parent_customer_id \
             FROM customers ORDER BY name, id"
        ),
        query(
            tx,
            "SELECT id, customer_id, name, description FROM projects ORDER BY name, id"
        ),
        query(
            tx,
            "SELECT id, project_id, name, COALESCE(location, '{}'::jsonb) \
             FROM sites ORDER BY name, id"
        ),
        query(
            tx,
            "SELECT id, site_id, name, device_type, external_id, status \
             FROM devices ORDER BY name, id"
        ),
        query(
            tx,
            "SELECT key, name, unit, COALESCE(metadata, '{}'::jsonb) \
             FROM parameter_templates ORDER BY key"
        ),
    )
    .map_err(|e| classify(&e))?;
    let get = |e: tokio_postgres::Error| classify(&e);
    let mut doc = RegistryDoc::default();
    for r in &customers {
        doc.customers.push(Customer {
            id: r.try_get(0).map_err(get)?,
            name: r.try_get(1).map_err(get)?,
            metadata: r.try_get(2).map_err(get)?,
            parent_customer_id: r.try_get::<_, Option<Uuid>>(3).map_err(get)?,
        });
    }
    for r in &projects {
        doc.projects.push(Project {
            id: r.try_get(0).map_err(get)?,
            customer_id: r.try_get(1).map_err(get)?,
            name: r.try_get(2).map_err(get)?,
            description: r.try_get(3).map_err(get)?,
        });
    }
    for r in &sites {
        doc.sites.push(Site {
            id: r.try_get(0).map_err(get)?,
            project_id: r.try_get(1).map_err(get)?,
            name: r.try_get(2).map_err(get)?,
            location: r.try_get(3).map_err(get)?,
        });
    }
    for r in &devices {
        doc.devices.push(Device {
            id: r.try_get(0).map_err(get)?,
            site_id: r.try_get(1).map_err(get)?,
            name: r.try_get(2).map_err(get)?,
            device_type: r.try_get(3).map_err(get)?,
            external_id: r.try_get(4).map_err(get)?,
            status: r.try_get(5).map_err(get)?,
        });
    }
    for r in &templates {
        doc.parameter_templates.push(ParameterTemplate {
            key: r.try_get(0).map_err(get)?,
            name: r.try_get(1).map_err(get)?,
            unit: r.try_get(2).map_err(get)?,
            metadata: r.try_get(3).map_err(get)?,
        });
    }
    Ok(doc)
}

/// Prepares (cached per connection) and runs a query without parameters.
async fn query(
    tx: &Transaction<'_>,
    sql: &str,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.query(&stmt, &[]).await
}
