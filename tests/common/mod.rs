//! A throwaway PostgreSQL cluster for real-client tests, the demo and the
//! benchmark: `initdb` into a fresh directory, started as the `postgres` user
//! (Postgres refuses to run as root) on a free loopback port, stopped and
//! removed on drop. The extension must already be installed into the server
//! (`cargo pgrx install`); `Cluster::start()` only creates it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

pub use postgres::{Client, NoTls};

pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    bindir: PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `cmd` run as the `postgres` OS user when we are root, as ourselves otherwise.
fn as_pg_user(cmd: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

/// `pg_config ARG` of the server under test (`PG_CONFIG`, default Debian's 15).
pub fn pg_config(arg: &str) -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = Command::new(&pg_config)
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("run {pg_config} {arg}: {e}"));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn bindir() -> PathBuf {
    match std::env::var("INTEGRITY_PG_BINDIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => pg_config("--bindir"),
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

fn run(mut c: Command, what: &str) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new, empty directory for a cluster, owned by `postgres` when we are
/// root.
fn cluster_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "integrity-cluster-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create cluster dir");
    if is_root() {
        run(
            {
                let mut c = Command::new("chown");
                c.args(["postgres:postgres"]).arg(&dir);
                c
            },
            "chown cluster dir",
        );
    }
    dir
}

impl Cluster {
    /// A fresh cluster with `CREATE EXTENSION integrity CASCADE` done.
    pub fn start() -> Cluster {
        Self::start_with(&[])
    }

    /// A fresh cluster with extra `postgresql.conf` settings (`name=value`).
    pub fn start_with(settings: &[&str]) -> Cluster {
        let bindir = bindir();
        let dir = cluster_dir();
        let data = dir.join("data");
        let mut initdb = as_pg_user(&bindir.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(initdb, "initdb");

        let port = free_port();
        let mut opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200",
            dir.display()
        );
        for s in settings {
            opts.push_str(&format!(" -c {s}"));
        }
        let cluster = Cluster { port, dir, bindir };
        cluster.start_server(&opts);
        let mut c = cluster.connect();
        c.batch_execute("CREATE EXTENSION integrity CASCADE")
            .expect("CREATE EXTENSION integrity");
        cluster
    }

    /// A hot standby of this cluster (pg_basebackup, streaming), running.
    #[allow(dead_code)]
    pub fn standby(&self) -> Cluster {
        let dir = cluster_dir();
        let data = dir.join("data");
        let mut backup = as_pg_user(&self.bindir.join("pg_basebackup"));
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ])
            .args(["-c", "fast"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-D")
            .arg(&data);
        run(backup, "pg_basebackup");
        let port = free_port();
        let standby = Cluster {
            port,
            dir,
            bindir: self.bindir.clone(),
        };
        standby.start_server(&format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c hot_standby=on -c max_connections=200",
            standby.dir.display()
        ));
        standby
    }

    /// `pg_ctl start` of this cluster's data directory with `opts`.
    fn start_server(&self, opts: &str) {
        let mut start = as_pg_user(&self.bindir.join("pg_ctl"));
        start
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-o")
            .arg(opts)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        // The server runs as it would in production: no Rust backtraces in
        // error details, whatever our own environment says.
        start
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        run(start, "pg_ctl start");
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.conninfo(), NoTls).expect("connect to test cluster")
    }

    /// `f(i, client)` on `n` connections of their own, all released at the
    /// same moment; their answers in order of `i`.
    pub fn at_once<T: Send + 'static>(
        &self,
        n: usize,
        f: impl Fn(usize, &mut Client) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let barrier = Arc::new(Barrier::new(n));
        let f = Arc::new(f);
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (ci, barrier, f) = (self.conninfo(), barrier.clone(), f.clone());
                std::thread::spawn(move || {
                    let mut c = Client::connect(&ci, NoTls).expect("connect to test cluster");
                    barrier.wait();
                    f(i, &mut c)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a client thread panicked"))
            .collect()
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = as_pg_user(&self.bindir.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = stop
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::env::var_os("INTEGRITY_KEEP_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SQLSTATE of a failed statement, or "00000".
pub fn sqlstate<T>(r: &Result<T, postgres::Error>) -> String {
    match r {
        Ok(_) => "00000".into(),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| format!("no sqlstate: {e}")),
    }
}
