//! `nsready registry (import|demo|list|export)`, `nsready migrate`, `nsready latest`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::table::{self, Align, cell};
use anyhow::Context;
use clap::Subcommand;
use nsready::app::{AppError, StoreTask, store_location, with_existing_store, with_store};
use nsready::config::Settings;
use nsready::registry::{ImportReport, RegistryDoc, demo};
use nsready::store::Store;

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Load customers, projects, sites, devices and parameter templates from a JSON file
    /// (idempotent: rows are matched by id, templates by key).
    Import {
        /// The file (format: the output of `registry export`).
        file: PathBuf,
    },
    /// Load the platform's demo registry (10 customers, 20 devices, 3 parameters).
    Demo,
    /// Show the registry.
    List {
        /// Print the import format as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the registry in the import format (to a file, or stdout).
    Export {
        /// Output file; stdout when absent.
        file: Option<PathBuf>,
    },
}

struct Migrate {
    create_roles: bool,
}
impl StoreTask for Migrate {
    type Output = ();
    async fn run<S: Store>(self, store: S) -> Result<(), AppError> {
        store.migrate().await?;
        if self.create_roles {
            store.create_roles().await?;
        }
        Ok(())
    }
}

struct Import(RegistryDoc);
impl StoreTask for Import {
    type Output = ImportReport;
    async fn run<S: Store>(self, store: S) -> Result<ImportReport, AppError> {
        store.migrate().await?;
        Ok(store.import_registry(&self.0).await?)
    }
}

struct Export;
impl StoreTask for Export {
    type Output = RegistryDoc;
    async fn run<S: Store>(self, store: S) -> Result<RegistryDoc, AppError> {
        store.migrate().await?;
        Ok(store.export_registry().await?)
    }
}

struct Latest(Option<uuid::Uuid>);
impl StoreTask for Latest {
    type Output = Vec<nsready::store::LatestValue>;
    async fn run<S: Store>(self, store: S) -> Result<Self::Output, AppError> {
        store.migrate().await?;
        Ok(store.latest(self.0).await?)
    }
}

/// `nsready migrate [--create-roles]`.
pub async fn migrate(s: &Settings, create_roles: bool) -> anyhow::Result<ExitCode> {
    with_store(s, Migrate { create_roles })
        .await
        .context("migration failed")?;
    println!("migrations applied");
    if create_roles {
        println!("roles nsready_ingest and nsready_read are ready (grant them to login users)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads the demo registry (used by `serve --demo` too).
pub async fn load_demo(s: &Settings) -> anyhow::Result<ImportReport> {
    let r = with_store(s, Import(demo()))
        .await
        .context("cannot load the demo registry")?;
    Ok(r)
}

fn print_report(r: &ImportReport) {
    println!(
        "imported: {} customers, {} projects, {} sites, {} devices, {} parameter templates",
        r.customers, r.projects, r.sites, r.devices, r.parameter_templates
    );
}

/// `nsready registry ...`.
pub async fn run(s: &Settings, cmd: RegistryCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RegistryCommand::Demo => print_report(&load_demo(s).await?),
        RegistryCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let doc = RegistryDoc::parse(&text).map_err(anyhow::Error::msg)?;
            let r = with_store(s, Import(doc)).await.context("import failed")?;
            print_report(&r);
        }
        RegistryCommand::Export { file } => {
            let doc = with_existing_store(s, Export).await?;
            let text = serde_json::to_string_pretty(&doc)?;
            match file {
                Some(f) => std::fs::write(&f, text + "\n")
                    .with_context(|| format!("cannot write {}", f.display()))?,
                None => println!("{text}"),
            }
        }
        RegistryCommand::List { json } => {
            let doc = with_existing_store(s, Export).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print_registry(&doc);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_registry(doc: &RegistryDoc) {
    println!(
        "{} customers, {} projects, {} sites, {} devices, {} parameter templates",
        doc.customers.len(),
        doc.projects.len(),
        doc.sites.len(),
        doc.devices.len(),
        doc.parameter_templates.len()
    );
    let mut devices = table::new(&[
        ("device_id", Align::Left),
        ("name", Align::Left),
        ("status", Align::Left),
        ("site_id", Align::Left),
        ("project_id", Align::Left),
    ]);
    for d in &doc.devices {
        let project = doc
            .sites
            .iter()
            .find(|s| s.id == d.site_id)
            .map(|s| s.project_id.to_string())
            .unwrap_or_default();
        devices.add_row(vec![
            cell(d.id),
            cell(&d.name),
            cell(&d.status),
            cell(d.site_id),
            cell(project),
        ]);
    }
    println!("\nDEVICES\n{}", table::render(&devices));
    let mut params = table::new(&[
        ("key", Align::Left),
        ("name", Align::Left),
        ("unit", Align::Left),
    ]);
    for t in &doc.parameter_templates {
        params.add_row(vec![
            cell(&t.key),
            cell(&t.name),
            cell(t.unit.as_deref().unwrap_or("")),
        ]);
    }
    println!("\nPARAMETERS\n{}", table::render(&params));
}

/// `nsready latest`.
pub async fn latest(
    s: &Settings,
    device: Option<uuid::Uuid>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let rows = with_existing_store(s, Latest(device)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let mut t = table::new(&[
            ("device_id", Align::Left),
            ("parameter_key", Align::Left),
            ("time", Align::Left),
            ("value", Align::Right),
            ("quality", Align::Right),
        ]);
        for r in &rows {
            let v = r
                .value
                .map(|v| v.to_string())
                .unwrap_or_else(|| "null".into());
            t.add_row(vec![
                cell(r.device_id),
                cell(&r.parameter_key),
                cell(r.time.to_rfc3339()),
                cell(v),
                cell(r.quality),
            ]);
        }
        println!("{}", table::render(&t));
        if rows.is_empty() {
            println!("(no rows yet in {})", store_location(s)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
