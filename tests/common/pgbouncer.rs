//! A real pgbouncer of the test's own, in transaction pooling mode: its own config, auth file,
//! log and free port under a temporary directory, in front of the suite's server
//! (`DATABASE_URL`'s host and port). Stopped, and its files removed, when the guard drops.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::temp::TempPath;

/// The running pgbouncer.
pub struct Pgbouncer {
    /// The directory of its config, auth file, log and pid file.
    dir: TempPath,
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
}

impl Pgbouncer {
    /// Starts pgbouncer with `pool_mode = transaction` and `pool_size` server connections
    /// per database, for every database of the server at `host:port`, user `user` (trust).
    pub fn start(host: &str, port: u16, user: &str, pool_size: u32) -> Pgbouncer {
        let dir = TempPath::dir("pgbouncer");
        let listen = free_port();
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        let config = format!(
            "[databases]\n\
             * = host={host} port={port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {pool_size}\n\
             max_client_conn = 500\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).unwrap();
        // pgbouncer refuses to run as root.
        let mut command = if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&*dir)
                .status()
                .unwrap();
            assert!(status.success());
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", "pgbouncer"]);
            command
        } else {
            Command::new("pgbouncer")
        };
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer is installed (apt-get install pgbouncer)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "pgbouncer listens within 10 s: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Pgbouncer {
            dir,
            child,
            port: listen,
        }
    }

    /// A URL of `database` through this pgbouncer.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// What it logged (its errors name refused clients and statements).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        // Under runuser the child is runuser: end pgbouncer itself, by the pid it wrote.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now (the kernel's choice for port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}
