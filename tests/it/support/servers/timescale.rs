//! Test servers: a throwaway PostgreSQL cluster with TimescaleDB preloaded
//! (`Postgres::start_timescale`), next to the plain one of `postgres.rs`.

use super::*;

impl Postgres {
    /// Starts a fresh cluster with `shared_preload_libraries=timescaledb`.
    ///
    /// Panics (never skips) when the extension is not installed for the PostgreSQL the tests
    /// use: CI installs it (`scripts/install-timescaledb`, run by `.ci/run`), and a
    /// TimescaleDB test that passed without TimescaleDB would prove nothing.
    pub fn start_timescale() -> Postgres {
        assert_timescale_installed();
        let pg = Postgres::start();
        pg.preload_timescale();
        pg
    }

    /// Preloads TimescaleDB in a running plain cluster: `ALTER SYSTEM` then a restart on the
    /// same port and data dir (what an operator does when adding the extension later).
    pub fn preload_timescale(&self) {
        assert_timescale_installed();
        self.psql(
            "postgres",
            "ALTER SYSTEM SET shared_preload_libraries = 'timescaledb'",
        );
        self.stop();
        // No phoning home from tests (only loopback traffic); background jobs stay on.
        // Written to the file, as `ALTER SYSTEM` knows the setting only once preloaded.
        let auto_conf = self.data_dir.join("postgresql.auto.conf");
        let mut conf = fs::read_to_string(&auto_conf)
            .unwrap_or_else(|e| panic!("read {}: {e}", auto_conf.display()));
        conf.push_str("timescaledb.telemetry_level = 'off'\n");
        fs::write(&auto_conf, conf)
            .unwrap_or_else(|e| panic!("write {}: {e}", auto_conf.display()));
        self.start_again();
    }
}

/// Panics with what to run when `timescaledb.control` is missing.
pub fn assert_timescale_installed() {
    let install = pg_install();
    let mut cmd = Command::new(install.tool("pg_config"));
    cmd.arg("--sharedir");
    let out = run_output(cmd, "pg_config --sharedir");
    let share = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let control = Path::new(&share).join("extension/timescaledb.control");
    assert!(
        out.status.success() && control.is_file(),
        "TimescaleDB is not installed for the PostgreSQL in {} ({} missing): run \
         `scripts/install-timescaledb` as root (CI's .ci/run does)",
        install.bin.display(),
        control.display()
    );
}
