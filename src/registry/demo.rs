//! The platform's demo registry, with fixed UUIDs (`nsready serve --demo`, `registry demo`).

use super::format::{
    Customer, Device, ParameterTemplate, Project, RegistryDoc, Site, empty_object,
};

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
    use std::collections::HashSet;

    use uuid::Uuid;

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
}
