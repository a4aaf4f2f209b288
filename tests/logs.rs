//! The real binary's logs: plain text when stderr is a file (no colour codes), one JSON
//! object a line with `--log-format json`, and the request id on lines about a request.

mod common;

use common::dev::DevProcess;
use junokv::protocol::{read_frame, Frame, OpCode, OpMessage};
use tokio::io::AsyncWriteExt;

const ID: [u8; 16] = [0xab; 16];
const ID_TEXT: &str = "abababab-abab-abab-abab-abababababab";

/// Runs `junokv dev` with `args` and `RUST_LOG=filter`, sends one Set with request id
/// [`ID`] to its plain port, stops it, and returns what it logged.
async fn logs_of_one_request(args: &[&str], filter: &str) -> String {
    let dev = DevProcess::start(args, &[], filter);
    let mut s = tokio::net::TcpStream::connect(&dev.plain).await.unwrap();
    let mut m = OpMessage::request(OpCode::Set.to_byte());
    m.namespace = b"logs".to_vec();
    m.key = b"k".to_vec();
    m.meta.request_id = Some(ID);
    s.write_all(&m.to_bytes()).await.unwrap();
    assert!(matches!(read_frame(&mut s).await, Ok(Frame::Message(..))));
    dev.stop()
}

#[tokio::test]
async fn text_logs_to_a_file_have_no_colour_and_name_the_request() {
    let text = logs_of_one_request(&[], "info,junokv::proxy=debug").await;
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
    let text = logs_of_one_request(&["--log-format", "json"], "info,junokv::proxy=debug").await;
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

/// A storage server's lines about a request name the client's request id too: it
/// travels with every internal message the proxy sends for the request.
#[tokio::test]
async fn storage_lines_about_a_request_name_it() {
    let text = logs_of_one_request(&[], "info,junokv::storage=trace").await;
    let steps: Vec<&str> = (text.lines())
        .filter(|l| l.contains("replica step") && l.contains("Accept"))
        .collect();
    assert!(!steps.is_empty(), "no storage line about the set:\n{text}");
    assert!(steps.iter().all(|l| l.contains(ID_TEXT)), "{steps:#?}");
}
