//! The registry: devices, their site and project, and parameter keys with their project.
//!
//! Pure data and rules, importing nothing above them (the store and the worker import
//! this): [`format`](RegistryDoc) is the import/export format (`nsready registry
//! import|export`), `checks` the business checks of DESIGN.md §7 on an in-memory
//! [`RegistrySnapshot`], `demo` the platform's demo registry with fixed UUIDs. The store
//! reads and writes the tables; the worker keeps the snapshot fresh
//! (`worker/registry_cache.rs`).

mod checks;
mod demo;
mod format;

pub use checks::{CheckFailure, DeviceInfo, RegistrySnapshot};
pub use demo::{demo, demo_ids};
pub use format::{
    Customer, Device, ImportReport, ParameterTemplate, Project, RegistryDoc, Site, template_project,
};
