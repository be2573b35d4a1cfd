//! Idempotency-key benchmark: what wrapping a business insert in
//! idem_begin / idem_complete costs, and what a replay costs, measured in
//! one run on one throwaway cluster against the bare insert.
//!
//!   (1) bare insert:    INSERT INTO bench_orders …                (autocommit)
//!   (2) wrapped insert: BEGIN; idem_begin(new key); INSERT …;
//!                       idem_complete(…); COMMIT
//!   (3) replay:         idem_begin(a completed key)               (autocommit)
//!
//! and two floors for (2), the same transaction with other statements in
//! place of the two calls:
//!
//!   (4) two no-op calls: SELECT 1 twice (what any wrapping costs);
//!   (5) plain SQL key row: a SELECT of the key by primary key, then an
//!       INSERT of a settled key row into a table with the same primary key
//!       as ours, its columns in the same order (the least a design storing
//!       one row per key does).
//!
//! and the same two transactions sent without BEGIN and COMMIT, which the
//! extended protocol runs as one implicit transaction up to the pipeline's
//! Sync (as it runs (1)'s single statement), so that only the cost of the
//! keys is added to the bare insert, not that of two transaction-control
//! statements:
//!
//!   (6) wrapped insert, implicit transaction: idem_begin; INSERT …;
//!       idem_complete
//!
//! and a ceiling for (2): (5) with its SELECT of the key replaced by
//! SELECT 1, so only the key row's INSERT is left of any key handling.
//! No design that stores one row per key in (2)'s five statements can
//! beat it: it looks nothing up, locks nothing, answers nothing.
//!
//!   (7) key row alone: BEGIN; SELECT 1; INSERT …; INSERT key row; COMMIT
//!
//! The client is pgbench, so the client's own work is small and the same
//! for every approach. Every request is one round trip: by default each
//! statement is prepared once per connection and sent with bind parameters
//! (the extended protocol, as drivers send a hot query), the five
//! statements of (2), (4), (5) pipelined. BENCH_PROTOCOL=simple sends each
//! request as one simple-protocol query string, which the server parses
//! and plans every time (for all approaches alike).
//!
//! Each approach's run sits between two runs of the bare insert, and its
//! ratio is taken against their mean: this machine's speed moves by tens
//! of percent within seconds, so only runs seconds apart compare. The
//! headline is the median of the rounds' ratios; "wrapped/SQL key row" is
//! the median over rounds of (2)'s ratio over (5)'s, ours against the
//! plain-SQL design storing the same row. Beside requests/s the
//! bench prints the CPU the whole machine (client, server, kernel) spent
//! per request, and the share of time the hypervisor stole.
//!
//! env: BENCH_SECONDS (default 2), BENCH_ROUNDS (5), BENCH_CLIENTS ("1,16"),
//! BENCH_PROTOCOL (prepared | simple), BENCH_SETTINGS (postgresql.conf);
//! BENCH_SCRIPTS_TO=DIR only writes the pgbench scripts there.

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;

use common::Cluster;
use std::path::PathBuf;

const ORG: &str = "0000000a-0000-0000-0000-000000000000";
const REPLAY_KEYS: usize = 1000;
/// A request fingerprint as (5) stores it: 64 hex digits, as ours.
const FP: &str = "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Bare,
    Wrapped,
    Replay,
    Calls,
    Floor,
    WrappedImplicit,
    RowAlone,
}

const KINDS: [Kind; 7] = [
    Kind::Bare,
    Kind::Wrapped,
    Kind::Replay,
    Kind::Calls,
    Kind::Floor,
    Kind::WrappedImplicit,
    Kind::RowAlone,
];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Bare => "(1) bare insert",
            Kind::Wrapped => "(2) insert + idem keys",
            Kind::Replay => "(3) replay",
            Kind::Calls => "(4) insert + 2 no-ops",
            Kind::Floor => "(5) insert + SQL key row",
            Kind::WrappedImplicit => "(6) (2) without BEGIN/COMMIT",
            Kind::RowAlone => "(7) key row alone",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Bare => "bare",
            Kind::Wrapped => "wrapped",
            Kind::Replay => "replay",
            Kind::Calls => "calls",
            Kind::Floor => "floor",
            Kind::WrappedImplicit => "wrapped_implicit",
            Kind::RowAlone => "row_alone",
        }
    }

    /// The request's statements; `:k` is a random key (unique in practice:
    /// 9·10^18 values), `:r` one of the replayed keys.
    fn statements(self) -> Vec<String> {
        let insert =
            |p: &str| format!("INSERT INTO bench_orders (key, amount) VALUES ('{p}-' || :k, 100)");
        let wrap = |(before, after): (String, String), p: &str| {
            vec!["BEGIN".into(), before, insert(p), after, "COMMIT".into()]
        };
        // idem_begin of the key `key` (an SQL expression).
        let begin = |key: &str| {
            format!("SELECT integrity.idem_begin('{ORG}', 'POST /orders', {key}, '{{\"amount\": 100}}')")
        };
        let idem = |p: &str| {
            (
                begin(&format!("'{p}-' || :k")),
                format!("SELECT integrity.idem_complete('{ORG}', 'POST /orders', '{p}-' || :k, 201, '{{\"order\": \"created\"}}')"),
            )
        };
        let sql_key_row = |p: &str| {
            (
                format!("SELECT 1 FROM bench_keys WHERE org_id = '{ORG}' AND scope = 'POST /orders' AND key = '{p}-' || :k"),
                format!(
                    "INSERT INTO bench_keys (org_id, scope, key, fingerprint, status, response_code, response, created_at, expires_at) \
                     VALUES ('{ORG}', 'POST /orders', '{p}-' || :k, '{FP}', 'completed', 201, '{{\"order\": \"created\"}}', now(), now() + '24 hours')"
                ),
            )
        };
        // The three statements of a request, without transaction control.
        let three = |(before, after): (String, String), p: &str| vec![before, insert(p), after];
        match self {
            Kind::Bare => vec![insert("b")],
            Kind::Wrapped => wrap(idem("w"), "w"),
            Kind::Replay => vec![begin("'r-' || :r")],
            Kind::Calls => wrap(("SELECT 1".into(), "SELECT 1".into()), "c"),
            Kind::Floor => wrap(sql_key_row("f"), "f"),
            Kind::WrappedImplicit => three(idem("i"), "i"),
            Kind::RowAlone => wrap(("SELECT 1".into(), sql_key_row("a").1), "a"),
        }
    }

    /// The pgbench script for this approach.
    fn script(self, simple: bool) -> String {
        let mut s = format!(
            "\\set k random(1, 9000000000000000000)\n\\set r random(0, {})\n",
            REPLAY_KEYS - 1
        );
        let stmts = self.statements();
        if simple {
            // One Query message: statements separated by `\;`.
            s += &stmts.join(" \\; ");
            s += ";\n";
        } else if stmts.len() > 1 {
            s += "\\startpipeline\n";
            for st in &stmts {
                s += st;
                s += ";\n";
            }
            s += "\\endpipeline\n";
        } else {
            s += &stmts[0];
            s += ";\n";
        }
        s
    }
}

fn main() {
    let simple = std::env::var("BENCH_PROTOCOL").as_deref() == Ok("simple");
    // BENCH_SCRIPTS_TO=DIR: only write each approach's pgbench script to
    // DIR/<name>.pgbench (what bench/instructions.sh counts on the wire).
    if let Ok(dir) = std::env::var("BENCH_SCRIPTS_TO") {
        for k in KINDS {
            let p = PathBuf::from(&dir).join(format!("{}.pgbench", k.name()));
            std::fs::write(&p, k.script(simple)).expect("write pgbench script");
        }
        return;
    }
    let secs: f64 = shared::var("BENCH_SECONDS", 2.0);
    let rounds: usize = shared::var("BENCH_ROUNDS", 5);
    let clients = shared::clients("1,16");
    let settings_owned = shared::settings();
    let settings: Vec<&str> = settings_owned.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(&settings);
    let mut admin = cluster.connect();
    admin
        .batch_execute(include_str!("idempotency_tables.sql"))
        .unwrap();
    // Completed keys for (3) to replay.
    admin
        .batch_execute(&format!(
            "SELECT integrity.idem_begin('{ORG}', 'POST /orders', 'r-' || g, '{{\"amount\": 100}}'),
                    integrity.idem_complete('{ORG}', 'POST /orders', 'r-' || g, 201, '{{\"order\": \"created\"}}')
             FROM generate_series(0, {}) g",
            REPLAY_KEYS - 1
        ))
        .unwrap();
    for t in ["integrity.idempotency_keys", "bench_orders", "bench_keys"] {
        admin.batch_execute(&format!("VACUUM ANALYZE {t}")).unwrap();
    }
    // The scripts live in the cluster's directory, removed with it.
    let scripts: Vec<PathBuf> = KINDS
        .iter()
        .map(|k| {
            let p = cluster.dir.join(format!("{}.pgbench", k.name()));
            std::fs::write(&p, k.script(simple)).expect("write pgbench script");
            p
        })
        .collect();
    let pg: String = admin.query_one("SHOW server_version", &[]).unwrap().get(0);
    let sync: String = admin
        .query_one("SHOW synchronous_commit", &[])
        .unwrap()
        .get(0);
    let protocol = if simple {
        "simple-protocol query strings"
    } else {
        "prepared statements, a request's statements pipelined"
    };
    println!(
        "idempotency benchmark (pgbench client): PostgreSQL {pg}, synchronous_commit={sync}, {protocol}, {rounds} rounds of {secs} s runs, each approach's run between two runs of the bare insert"
    );
    let k = KINDS.len();
    let mut worst_wrapped = f64::INFINITY;
    let mut worst_replay = f64::INFINITY;
    let mut worst_vs_floor = f64::INFINITY;
    let mut worst_implicit = f64::INFINITY;
    let mut worst_vs_ceiling = f64::INFINITY;
    for &n in &clients {
        // A round runs bare, A, bare, B, …, bare, F, bare (A..F the
        // other approaches, their order turned by one each round), and
        // each approach's ratio is its requests/s over the mean of the two
        // bare runs beside it: on a machine whose speed moves by tens of
        // percent within seconds, a ratio of runs seconds apart.
        let mut runs: Vec<Vec<shared::Run>> = (0..k).map(|_| Vec::new()).collect();
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); k];
        for round in 0..rounds {
            let run = |i: usize| shared::pgbench_run(&cluster, &scripts[i], n, secs, simple);
            let mut before = run(0);
            for j in 0..k - 1 {
                let i = 1 + (j + round) % (k - 1);
                let r = run(i);
                let after = run(0);
                ratios[i].push(r.tps / ((before.tps + after.tps) / 2.0));
                runs[i].push(r);
                runs[0].push(before);
                before = after;
            }
            runs[0].push(before);
        }
        let (steal_min, steal_max) = runs
            .iter()
            .flatten()
            .fold((f64::INFINITY, 0.0f64), |(a, b), r| {
                (a.min(r.steal_pct), b.max(r.steal_pct))
            });
        println!(
            "{:>3}  {:<24} {:>9} {:>11}  /bare: median, then each round",
            "cl", "approach", "req/s", "CPU µs/req"
        );
        let mut m = vec![1.0; k];
        for (i, kind) in KINDS.iter().enumerate() {
            let tps = shared::median(runs[i].iter().map(|r| r.tps).collect());
            let cpu = shared::median(runs[i].iter().map(|r| r.cpu_us).collect());
            let rel = if i == 0 {
                String::new()
            } else {
                m[i] = shared::median(ratios[i].clone());
                let each: Vec<String> = ratios[i].iter().map(|r| format!("{r:.2}")).collect();
                format!("{:.2}  ({})", m[i], each.join(", "))
            };
            println!(
                "{:>3}  {:<24} {:>9.0} {:>11.0}  {}",
                n,
                kind.label(),
                tps,
                cpu,
                rel
            );
        }
        // The position of an approach in KINDS (and in m, ratios).
        let at = |kind: Kind| {
            KINDS
                .iter()
                .position(|&k| k == kind)
                .expect("every kind is in KINDS")
        };
        let (w, r) = (m[at(Kind::Wrapped)], m[at(Kind::Replay)]);
        // Ours against another approach j: in each round, the ratio of
        // their two ratios to the bare runs beside them.
        let wrapped_over = |j: usize| {
            shared::median(
                ratios[at(Kind::Wrapped)]
                    .iter()
                    .zip(&ratios[j])
                    .map(|(w, o)| w / o)
                    .collect(),
            )
        };
        // Against the plain-SQL key row (5), and the key row alone (7).
        let (vs_floor, vs_ceiling) = (
            wrapped_over(at(Kind::Floor)),
            wrapped_over(at(Kind::RowAlone)),
        );
        let implicit = m[at(Kind::WrappedImplicit)];
        worst_wrapped = worst_wrapped.min(w);
        worst_replay = worst_replay.min(r);
        worst_vs_floor = worst_vs_floor.min(vs_floor);
        worst_implicit = worst_implicit.min(implicit);
        worst_vs_ceiling = worst_vs_ceiling.min(vs_ceiling);
        println!(
            "{n:>3}  wrapped/bare = {w:.2}   replay/bare = {r:.2}   floors: no-ops/bare = {:.2}, SQL key row/bare = {:.2}   wrapped/SQL key row = {vs_floor:.2}   steal {steal_min:.0}-{steal_max:.0} %",
            m[at(Kind::Calls)], m[at(Kind::Floor)]
        );
        println!(
            "{n:>3}  ceiling: key row alone/bare = {:.2}   wrapped/key row alone = {vs_ceiling:.2}   without BEGIN/COMMIT (one implicit transaction): wrapped/bare = {implicit:.2}",
            m[at(Kind::RowAlone)]
        );
    }
    // pgbench does not look at answers: check afterwards that every wrapped
    // request began a new key and completed it, and that replays wrote nothing.
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM bench_orders WHERE key LIKE 'w-%' OR key LIKE 'i-%'),
                    (SELECT count(*) FROM integrity.idempotency_keys
                      WHERE (key LIKE 'w-%' OR key LIKE 'i-%') AND status = 'completed' AND attempts = 1),
                    (SELECT count(*) FROM integrity.idempotency_keys WHERE key LIKE 'r-%')",
            &[],
        )
        .unwrap();
    let (orders, keys, replayed): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!("check: {orders} wrapped inserts, {keys} keys completed once, {replayed} replayed keys (of {REPLAY_KEYS})");
    assert_eq!(
        orders, keys,
        "every wrapped insert has its own completed key"
    );
    assert_eq!(replayed as usize, REPLAY_KEYS);
    println!("summary: worst wrapped/bare = {worst_wrapped:.2} (target >= 0.70), worst replay/bare = {worst_replay:.2} (target >= 1.00), worst wrapped/SQL key row = {worst_vs_floor:.2}, worst wrapped/key row alone = {worst_vs_ceiling:.2}, worst wrapped/bare without BEGIN/COMMIT = {worst_implicit:.2}");
}
