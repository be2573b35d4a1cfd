//! What both benchmarks share: settings read from the environment, and the
//! median of a cell's rounds.

/// `name` parsed, or `default` when unset or unparsable.
pub fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `BENCH_CLIENTS` as a list ("1,8,32"), or `default`.
pub fn clients(default: &str) -> Vec<usize> {
    std::env::var("BENCH_CLIENTS")
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// `BENCH_SETTINGS`: extra postgresql.conf lines for the throwaway cluster.
pub fn settings() -> Vec<String> {
    std::env::var("BENCH_SETTINGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The median of a cell's rounds (the upper one for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pgbench() -> std::path::PathBuf {
    let dir = match std::env::var("INTEGRITY_PG_BINDIR") {
        Ok(d) => std::path::PathBuf::from(d),
        Err(_) => crate::common::pg_config("--bindir"),
    };
    dir.join("pgbench")
}

/// What one pgbench run measured: requests (transactions) per second, and
/// the whole machine's CPU in that time (client, server and kernel alike).
#[allow(dead_code)]
pub struct Run {
    pub tps: f64,
    /// Busy CPU per request, in µs: user, nice, system, irq and softirq
    /// time from `/proc/stat`, over the requests pgbench completed.
    pub cpu_us: f64,
    /// Share of the machine's time the hypervisor gave to others (steal), %.
    pub steal_pct: f64,
}

/// The first line of `/proc/stat`: the machine's CPU time so far, in ticks
/// (user, nice, system, idle, iowait, irq, softirq, steal); zeros where it
/// cannot be read.
fn cpu_ticks() -> [u64; 8] {
    let mut t = [0u64; 8];
    if let Ok(s) = std::fs::read_to_string("/proc/stat") {
        if let Some(line) = s.lines().next() {
            for (slot, v) in t.iter_mut().zip(line.split_whitespace().skip(1)) {
                *slot = v.parse().unwrap_or(0);
            }
        }
    }
    t
}

/// Clock ticks per second (`getconf CLK_TCK`, asked once; Linux's usual
/// 100 otherwise).
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The number pgbench printed after `prefix` at the start of a line.
fn pgbench_figure(stdout: &str, prefix: &str) -> Option<f64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// pgbench at `clients` clients against `cluster`'s database postgres,
/// running `script` with prepared statements (or simple-protocol query
/// strings); the caller adds how long.
fn pgbench_command(
    cluster: &crate::common::Cluster,
    script: &std::path::Path,
    clients: usize,
    simple: bool,
) -> std::process::Command {
    let mut c = std::process::Command::new(pgbench());
    c.args(["-n", "-h", "127.0.0.1", "-U", "postgres"])
        .arg("-p")
        .arg(cluster.port.to_string())
        .args(["-M", if simple { "simple" } else { "prepared" }])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-f")
        .arg(script)
        .arg("postgres");
    c
}

/// Run `cmd` (from `pgbench_command`) to its end; its standard output and
/// the transactions per second it printed. A pgbench that failed, or
/// aborted a client, stops the bench.
fn pgbench_output(mut cmd: std::process::Command, script: &std::path::Path) -> (String, f64) {
    let out = cmd.output().expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("aborted"),
        "pgbench failed on {}:\n{stdout}\n{stderr}",
        script.display()
    );
    let tps = pgbench_figure(&stdout, "tps = ")
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{stdout}"));
    (stdout, tps)
}

/// One pgbench run of `script` at `clients` clients (prepared statements,
/// or simple-protocol query strings): its transactions per second, and
/// the CPU the machine spent on it.
#[allow(dead_code)]
pub fn pgbench_run(
    cluster: &crate::common::Cluster,
    script: &std::path::Path,
    clients: usize,
    secs: f64,
    simple: bool,
) -> Run {
    let before = cpu_ticks();
    let mut cmd = pgbench_command(cluster, script, clients, simple);
    cmd.arg("-T").arg(format!("{}", secs.ceil() as u64));
    let (stdout, tps) = pgbench_output(cmd, script);
    let after = cpu_ticks();
    let requests =
        pgbench_figure(&stdout, "number of transactions actually processed: ").unwrap_or(0.0);
    let d: Vec<f64> = (0..8)
        .map(|i| after[i].saturating_sub(before[i]) as f64)
        .collect();
    let busy = d[0] + d[1] + d[2] + d[5] + d[6];
    let total: f64 = d.iter().sum();
    Run {
        tps,
        cpu_us: if requests > 0.0 {
            busy / ticks_per_second() * 1e6 / requests
        } else {
            f64::NAN
        },
        steal_pct: if total > 0.0 {
            100.0 * d[7] / total
        } else {
            0.0
        },
    }
}

/// One client running `script` `transactions` times, each on a new
/// connection (`pgbench -C`): the milliseconds one takes, connecting
/// included.
#[allow(dead_code)]
pub fn pgbench_connecting_ms(
    cluster: &crate::common::Cluster,
    script: &std::path::Path,
    transactions: usize,
) -> f64 {
    let mut cmd = pgbench_command(cluster, script, 1, false);
    cmd.arg("-C").arg("-t").arg(transactions.to_string());
    1000.0 / pgbench_output(cmd, script).1
}
