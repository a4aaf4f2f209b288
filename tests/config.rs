//! Configuration files through the real binary: `junokv config check` accepts good
//! files and names what is wrong in bad ones (the file, the line of an unknown key,
//! the setting out of range), and servers refuse to start on the same errors.

use std::path::Path;
use std::process::{Command, Output};

fn junokv(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_junokv"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const PROXY: &str = r#"
plain_listen = "127.0.0.1:0"

[cluster]
epoch = 1
num_shards = 64
[[cluster.zones]]
datacenter = "dc1"
nodes = ["127.0.0.1:7001"]
"#;

const STORAGE: &str = r#"
listen = "127.0.0.1:0"
data_dir = "data"
plaintext = true
"#;

/// `junokv config check` on `text`: Ok(stdout) or Err(stderr).
fn check(dir: &Path, text: &str) -> Result<String, String> {
    std::fs::write(dir.join("c.toml"), text).unwrap();
    let out = junokv(&["config", "check", "c.toml"], dir);
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Some(2) => Err(stderr(&out)),
        other => panic!("exit status {other:?}: {}", stderr(&out)),
    }
}

#[test]
fn good_configs_pass() {
    let dir = tempfile::tempdir().unwrap();
    assert!(check(dir.path(), PROXY)
        .unwrap()
        .contains("a valid proxy config"));
    assert!(check(dir.path(), STORAGE)
        .unwrap()
        .contains("a valid storage server config"));
    // One-round-trip writes off.
    let no_leases = format!("{PROXY}\n[leases]\nmemory_bytes = 0\n");
    assert!(check(dir.path(), &no_leases).is_ok());
    // A cache: records in memory, capped.
    let cluster = PROXY.split_once("[cluster]").unwrap().1;
    let memory = format!(
        "engine = \"memory\"\n{STORAGE}[memory]\nlimit_mb = 64\nrecovery_delay_ms = 3000\n\
         [cluster]{cluster}"
    );
    assert!(check(dir.path(), &memory).is_ok(), "{memory}");
}

#[test]
fn bad_configs_are_named_with_file_line_and_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = PROXY.split_once("[cluster]").unwrap().1;
    let cases = [
        // An unknown key: the file, its line, and the key.
        (
            format!("{PROXY}\n[timeouts]\nrequest_msec = 5\n"),
            vec!["c.toml", "line 12", "request_msec"],
        ),
        (
            format!("{STORAGE}colour = \"blue\"\n"),
            vec!["c.toml", "line 5", "colour"],
        ),
        // A storage server named by an id the map does not have.
        (
            format!("id = \"elsewhere:7001\"\n{STORAGE}\n[cluster]{cluster}"),
            vec!["c.toml", "elsewhere:7001", "not a node of [cluster]"],
        ),
        // Values out of range, named.
        (
            format!("{PROXY}\n[timeouts]\nround_ms = 5000\n"),
            vec!["c.toml", "timeouts.round_ms (5000)"],
        ),
        (
            format!("{PROXY}\n[timeouts]\npurge_grace_secs = 1\n"),
            vec!["timeouts.purge_grace_secs (1)"],
        ),
        (
            format!("{PROXY}\n[limits]\ndefault_ttl = 999999\n"),
            vec!["limits.default_ttl (999999)"],
        ),
        (
            format!("{PROXY}\n[limits]\nmax_namespace_length = 256\n"),
            vec!["limits.max_namespace_length must be at most 255"],
        ),
        (
            format!("{PROXY}\n[connections]\nmax_connections = 0\n"),
            vec!["connections.max_connections"],
        ),
        (
            format!("{PROXY}\n[leases]\nmemory = 5\n"),
            vec!["c.toml", "line 12", "memory"],
        ),
        (
            PROXY.replace("num_shards = 64", "num_shards = 0"),
            vec!["[cluster]", "num_shards"],
        ),
        (
            format!(
                "{PROXY}[[cluster.zones]]\ndatacenter = \"dc2\"\nnodes = [\"127.0.0.1:7001\"]\n"
            ),
            vec!["[cluster]", "node 127.0.0.1:7001 is named twice"],
        ),
        (
            PROXY.replace("plain_listen", "listen"),
            vec!["`listen`", "[tls]"],
        ),
        (
            format!("{STORAGE}[sweeper]\nconcurrency = 0\n"),
            vec!["sweeper.concurrency"],
        ),
        // The in-memory engine: a known engine, its settings only with it, and a map to
        // recover from.
        (
            format!("engine = \"ram\"\n{STORAGE}"),
            vec!["c.toml", "line 1", "rocksdb", "memory"],
        ),
        (
            format!("{STORAGE}[memory]\nlimit_mb = 64\n"),
            vec!["[memory] is for engine = \"memory\" only"],
        ),
        (
            format!("engine = \"memory\"\n{STORAGE}"),
            vec!["engine = \"memory\" needs [cluster]"],
        ),
        (
            format!("engine = \"memory\"\n{STORAGE}[memory]\nlimit_mb = 0\n[cluster]{cluster}"),
            vec!["memory.limit_mb must be at least 1"],
        ),
        // Files that must be there, and private.
        (
            STORAGE.replace(
                "plaintext = true",
                "[tls]\ncert = \"no.crt\"\nkey = \"no.key\"\nca = \"no.crt\"",
            ),
            vec!["no.crt"],
        ),
        (
            format!("{STORAGE}[encryption]\nkey_file = \"keys.toml\"\n"),
            vec!["keys.toml"],
        ),
    ];
    for (text, expect) in cases {
        let err = check(dir.path(), &text).expect_err(&text);
        for e in expect {
            assert!(err.contains(e), "expected {e:?} in {err:?} for\n{text}");
        }
    }
}

#[test]
fn servers_refuse_to_start_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    // `junokv ARGS` exits 2, saying `what`.
    let refused = |args: &[&str], what: &str| {
        let out = junokv(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(what), "{}", stderr(&out));
    };
    std::fs::write(
        dir.path().join("p.toml"),
        format!("{PROXY}\n[timeouts]\nround_ms = 0\n"),
    )
    .unwrap();
    refused(&["proxy", "--config", "p.toml"], "timeouts.round_ms (0)");
    // An in-memory server that cannot find itself in the map would recover for ever.
    let cluster = PROXY.split_once("[cluster]").unwrap().1;
    let memory = STORAGE.replace("127.0.0.1:0", "0.0.0.0:0") + "engine = \"memory\"\n";
    std::fs::write(
        dir.path().join("m.toml"),
        format!("{memory}\n[cluster]{cluster}"),
    )
    .unwrap();
    refused(&["storage", "--config", "m.toml"], "--id");
    refused(
        &["storage", "--config", "m.toml", "--id", "nowhere:1"],
        "nowhere:1",
    );
    std::fs::write(dir.path().join("d.toml"), "[cluster]\nepoch = 1\n").unwrap();
    refused(
        &["dev", "--config", "d.toml", "--data-dir", "data"],
        "unknown field `cluster`",
    );
}
