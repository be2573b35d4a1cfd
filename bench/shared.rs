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

/// Transactions per second pgbench measures for `script` at `clients`
/// clients (prepared statements, or simple-protocol query strings).
pub fn pgbench_tps(
    cluster: &crate::common::Cluster,
    script: &std::path::Path,
    clients: usize,
    secs: f64,
    simple: bool,
) -> f64 {
    let out = std::process::Command::new(pgbench())
        .args(["-n", "-h", "127.0.0.1", "-U", "postgres"])
        .arg("-p")
        .arg(cluster.port.to_string())
        .args(["-M", if simple { "simple" } else { "prepared" }])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg(format!("{}", secs.ceil() as u64))
        .arg("-f")
        .arg(script)
        .arg("postgres")
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("aborted"),
        "pgbench failed on {}:\n{stdout}\n{stderr}",
        script.display()
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{stdout}"))
}
