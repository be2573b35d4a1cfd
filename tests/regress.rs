//! Golden-file SQL tests: what users see (results, error messages with
//! SQLSTATE and HINT, COMMENTs), run by Postgres's own pg_regress against a
//! throwaway cluster. Files: test/sql/*.sql, expected output test/expected/*.out.

mod common;

use common::Cluster;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn golden_sql_files_match() {
    let cluster = Cluster::start();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut tests: Vec<String> = std::fs::read_dir(root.join("test/sql"))
        .expect("test/sql")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".sql"))
                .map(str::to_owned)
        })
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no golden SQL files found");

    let mut c = cluster.connect();
    c.batch_execute("CREATE DATABASE integrity_regress")
        .unwrap();

    let pkglibdir = common::pg_config("--pkglibdir");
    let pg_regress = pkglibdir.join("pgxs/src/test/regress/pg_regress");
    let outdir = root.join("target/regress");
    std::fs::create_dir_all(&outdir).unwrap();

    let out = Command::new(&pg_regress)
        .arg("--use-existing")
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &cluster.port.to_string(),
            "--user",
            "postgres",
        ])
        .args(["--dbname", "integrity_regress"])
        .arg(format!(
            "--bindir={}",
            cluster.bin("psql").parent().unwrap().display()
        ))
        .arg(format!("--inputdir={}", root.join("test").display()))
        .arg(format!("--outputdir={}", outdir.display()))
        .args(&tests)
        // The golden files include test/try.psql by that path (pg_regress
        // feeds psql on stdin, so \i resolves from here).
        .current_dir(&root)
        .env("PGTZ", "UTC")
        .env("PGDATESTYLE", "ISO, MDY")
        .output()
        .expect("run pg_regress");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        let diffs = std::fs::read_to_string(outdir.join("regression.diffs")).unwrap_or_default();
        panic!(
            "pg_regress failed:\n{}\n{diffs}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
