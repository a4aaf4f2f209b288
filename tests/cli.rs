//! The client commands of the real binary against `junokv dev`: each takes only its own
//! arguments, `--output json` gives one object, exit codes tell the status, and shell
//! completions come out.

mod common;

use common::dev::DevProcess;
use std::process::Command;

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

#[test]
fn client_commands_answer_in_text_and_json() {
    let dev = DevProcess::start(&[], &[], "warn");
    let (code, out) = dev.cli(&["set", "k", "v1", "--ttl", "600", "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let set = json(&out);
    assert_eq!(
        (set["status"].as_str(), set["version"].as_u64()),
        (Some("Ok"), Some(1))
    );
    let (code, out) = dev.cli(&["get", "k", "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["value"], "v1");
    assert!(json(&out)["ttl"].as_u64().unwrap() > 590);
    let (code, out) = dev.cli(&["update", "k", "v2", "--version", "7", "--output", "json"]);
    assert_eq!(
        (code, json(&out)["status"].as_str()),
        (1, Some("VersionConflict"))
    );
    let (code, out) = dev.cli(&["update", "k", "v2", "--version", "1"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("version 2\nttl "), "{out}");
    let (code, out) = dev.cli(&["get", "k"]);
    assert_eq!(code, 0);
    assert!(out.ends_with("value v2\n"), "{out}");
    assert_eq!(dev.cli(&["destroy", "k"]), (0, "Ok\n".into()));
    assert_eq!(dev.cli(&["get", "k"]), (1, "NoKey\n".into()));
    // Arguments that do not apply are refused (clap's usage error: exit status 2).
    assert_eq!(dev.cli(&["get", "k", "value"]).0, 2);
    assert_eq!(dev.cli(&["get", "k", "--version", "1"]).0, 2);
    assert_eq!(dev.cli(&["set", "k", "v", "--version", "1"]).0, 2);
    assert_eq!(dev.cli(&["destroy", "k", "--ttl", "5"]).0, 2);
    assert_eq!(dev.cli(&["set", "k"]).0, 2, "set needs a value");
    dev.stop();
}

#[test]
fn shell_completions_name_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_junokv"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("destroy") && script.contains("namespace"),
            "{shell}"
        );
    }
}

#[test]
fn status_shows_every_storage_node() {
    let dev = DevProcess::start(&[], &["--admin-listen", "127.0.0.1:0"], "warn");
    let admin = dev.admin.clone().expect("an admin port");
    let (code, out) = dev.run(&["status", "--admin", &admin], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1024 shards, 3 zones, quorum 2"), "{out}");
    // Each node: its shards, up, what its engine holds and its version.
    let version = env!("CARGO_PKG_VERSION");
    let nodes: Vec<&str> = (out.lines())
        .filter(|l| l.contains("  1024  up  ") && l.ends_with(&format!("B  {version}")))
        .collect();
    assert_eq!(nodes.len(), 3, "{out}");
    assert!(out.contains("DISK  VERSION"), "{out}");
    assert!(out.ends_with("every shard has a quorum\n"), "{out}");
    let (code, out) = dev.run(&["status", "--admin", &admin, "--output", "json"], &[]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["shards_without_quorum"], 0);
    dev.stop();
}

#[test]
fn a_memory_dev_cluster_forgets_everything_when_it_restarts_and_recovers() {
    let args = ["--engine", "memory", "--admin-listen", "127.0.0.1:0"];
    let dev = DevProcess::start(&[], &args, "warn");
    assert_eq!(dev.cli(&["set", "k", "v1"]).0, 0);
    assert!(dev.cli(&["get", "k"]).1.ends_with("value v1\n"));
    let (dir, _) = dev.stop_keeping_data();
    // Every replica lost its records: each counts every key as forgotten until it has
    // recovered from the others (none of which remembers anything either).
    let dev = DevProcess::start_in(dir, &[], &args, "warn");
    let admin = dev.admin.clone().expect("an admin port");
    let (code, out) = dev.run(&["status", "--admin", &admin], &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.matches("  recovering  ").count(), 3, "{out}");
    assert!(out.ends_with("1024 shards lack a quorum: their keys cannot be read or written\n"));
    let readyz = http_get(&admin, "/readyz");
    assert!(
        readyz.starts_with("HTTP/1.1 503") && readyz.contains("(recovering)"),
        "{readyz}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dev.run(&["status", "--admin", &admin], &[]).0 != 0 {
        assert!(std::time::Instant::now() < deadline, "never recovered");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(http_get(&admin, "/readyz").starts_with("HTTP/1.1 200"));
    assert_eq!(dev.cli(&["get", "k"]), (1, "NoKey\n".into()));
    assert_eq!(dev.cli(&["set", "k", "v2"]).0, 0);
    dev.stop();
}

/// One plain HTTP/1.1 GET: the whole response.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_closed_stdout_ends_a_client_command_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_junokv"))
        .args(["completions", "bash"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn map_plan_shows_what_adding_a_node_moves_and_refuses_an_older_map() {
    let dir = tempfile::tempdir().unwrap();
    let map = |epoch: u64, zone0: &str| {
        format!(
            "[cluster]\nepoch = {epoch}\nzones = [\n  {{ datacenter = \"dc1\", nodes = [{zone0}] }},\n  \
             {{ datacenter = \"dc2\", nodes = [\"b:1\"] }},\n  {{ datacenter = \"dc3\", nodes = [\"c:1\"] }},\n]\n"
        )
    };
    let (old, new) = (dir.path().join("old.toml"), dir.path().join("new.toml"));
    std::fs::write(&old, map(1, "\"a:1\", \"a:2\"")).unwrap();
    std::fs::write(
        &new,
        map(2, "\"a:1\", \"a:2\", { id = \"a3\", addr = \"a:3\" }"),
    )
    .unwrap();
    let junokv = |args: &[&std::path::Path]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_junokv"));
        c.arg("map").args(args);
        c.output().unwrap()
    };
    let shown = junokv(&["show".as_ref(), new.as_path()]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success() && text.contains("a3 at a:3: "),
        "{text}"
    );
    let planned = junokv(&["plan".as_ref(), old.as_path(), new.as_path()]);
    let text = String::from_utf8_lossy(&planned.stdout);
    assert!(planned.status.success(), "{text}");
    assert!(text.contains("a3 (added): 0 -> "), "{text}");
    assert!(text.contains("zone 1 (dc2): nothing moves"), "{text}");
    let backwards = junokv(&["plan".as_ref(), new.as_path(), old.as_path()]);
    assert_eq!(backwards.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&backwards.stderr).contains("epoch"));
}
