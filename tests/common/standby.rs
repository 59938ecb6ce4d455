//! A primary and its streaming hot standby, both private clusters of the test's own: the
//! primary started by the code `connect` uses when no server is configured
//! (`start_private_cluster`), the standby copied from it with `pg_basebackup -R` and started
//! by the same code. Both listen on unix sockets in their own directories only; both are
//! stopped, and their files removed, when the guard drops — also when the test fails.

use std::path::{Path, PathBuf};

use retrylog::connect::{start_private_cluster, stop_private_cluster};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor};

use super::temp::TempPath;

/// The two clusters; dropping it stops both.
pub struct Pair {
    /// A 0700 directory of the test's own: `p` (the primary) and `s` (the standby) inside.
    base: TempPath,
    /// The primary's server (maintenance database).
    pub primary: PgConnectOptions,
    /// The standby's server (maintenance database).
    pub standby: PgConnectOptions,
}

impl Pair {
    /// Starts a primary with the database `database`, copies it to a standby that streams
    /// from it, and starts that.
    pub async fn start(database: &str) -> Pair {
        let base = TempPath::private_dir("replica");
        let primary = start_private_cluster(&base.join("p"))
            .await
            .expect("the primary starts");
        let mut conn = sqlx::PgConnection::connect_with(&primary).await.unwrap();
        conn.execute(format!("CREATE DATABASE {database}").as_str())
            .await
            .unwrap();
        // A standby must not be slower to cancel than the tests are to wait for a conflict.
        conn.execute("ALTER SYSTEM SET max_standby_streaming_delay = 0")
            .await
            .unwrap();
        drop(conn);
        let standby_dir = base.join("s");
        std::fs::create_dir(&standby_dir).unwrap();
        give_to_cluster_user(&standby_dir);
        let socket = base.join("p");
        let out = server_program("pg_basebackup")
            .args(["-X", "stream", "-c", "fast", "-R", "-U", "postgres", "-h"])
            .arg(&socket)
            .arg("-p")
            .arg(primary.get_port().to_string())
            .arg("-D")
            .arg(standby_dir.join("pgdata"))
            .current_dir("/")
            .output()
            .expect("pg_basebackup runs");
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let standby = start_private_cluster(&standby_dir)
            .await
            .expect("the standby starts");
        Pair {
            base,
            primary: primary.database(database),
            standby: standby.database(database),
        }
    }

    /// The data directory of the standby's private cluster.
    fn standby_dir(&self) -> PathBuf {
        self.base.join("s")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = stop_private_cluster(&self.standby_dir());
        let _ = stop_private_cluster(&self.base.join("p"));
    }
}

/// A program of the installed server (`/usr/lib/postgresql/*/bin`), run as the clusters' user
/// `postgres` when the tests run as root (as the private clusters themselves are).
fn server_program(name: &str) -> std::process::Command {
    let path = std::fs::read_dir("/usr/lib/postgresql")
        .expect("the PostgreSQL server binaries are installed")
        .filter_map(|entry| Some(entry.ok()?.path().join("bin").join(name)))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("{name} is installed"));
    if is_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        std::process::Command::new(path)
    }
}

/// `chown postgres: path`, 0700, when running as root (nothing to do otherwise).
fn give_to_cluster_user(path: &Path) {
    if is_root() {
        let status = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A URL of a private cluster's database, for the binary's flags: the socket directory as
/// `host`.
pub fn url(options: &PgConnectOptions) -> String {
    let socket = options
        .get_socket()
        .expect("a private cluster listens on a socket");
    format!(
        "postgres://postgres@localhost/{}?host={}&port={}",
        options.get_database().expect("a database"),
        socket.display(),
        options.get_port()
    )
}
