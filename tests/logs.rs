//! The real binary's logs: plain text when stderr is a file (no colour codes), one JSON
//! object a line with `--log-format json`, and the request id on lines about a request.

use junokv::protocol::{read_frame, Frame, OpCode, OpMessage};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use tokio::io::AsyncWriteExt;

const ID: [u8; 16] = [0xab; 16];
const ID_TEXT: &str = "abababab-abab-abab-abab-abababababab";

/// Runs `junokv dev` with `args`, sends one Set with request id [`ID`] to its plain
/// port, stops it, and returns what it logged.
async fn logs_of_one_request(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut dev = Command::new(env!("CARGO_BIN_EXE_junokv"))
        .args(args)
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info,junokv::proxy=debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(dev.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    // "... clients connect to ADDR (plain text) or ..."
    let plain = banner
        .split("connect to ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"));

    let mut s = tokio::net::TcpStream::connect(plain).await.unwrap();
    let mut m = OpMessage::request(OpCode::Set.to_byte());
    m.namespace = b"logs".to_vec();
    m.key = b"k".to_vec();
    m.meta.request_id = Some(ID);
    s.write_all(&m.to_bytes()).await.unwrap();
    assert!(matches!(read_frame(&mut s).await, Ok(Frame::Message(..))));

    let killed = Command::new("kill")
        .arg(dev.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(
        dev.wait().unwrap().success(),
        "junokv dev exits cleanly on SIGTERM"
    );
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test]
async fn text_logs_to_a_file_have_no_colour_and_name_the_request() {
    let text = logs_of_one_request(&[]).await;
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file:\n{text}"
    );
    let answered = text.lines().find(|l| l.contains("answered"));
    let answered = answered.unwrap_or_else(|| panic!("no line about the request:\n{text}"));
    assert!(answered.contains(ID_TEXT), "{answered}");
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_with_the_request_id() {
    let text = logs_of_one_request(&["--log-format", "json"]).await;
    assert!(!text.contains('\x1b'));
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "proxy listening"));
    let answered = lines
        .iter()
        .find(|l| l["fields"]["message"] == "answered")
        .unwrap_or_else(|| panic!("no line about the request:\n{text}"));
    assert_eq!(answered["span"]["id"], ID_TEXT, "{answered}");
    assert_eq!(answered["fields"]["status"], "Ok", "{answered}");
}
