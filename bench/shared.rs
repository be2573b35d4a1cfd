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
