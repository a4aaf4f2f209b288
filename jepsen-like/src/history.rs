//! The history format shared by the simulator, the real-cluster runner and the chaos
//! harness (JSON Lines; documented in `jepsen-like/README.md`), and its pairing into
//! operations.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What kind of event a line is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// The operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum F {
    Create,
    Get,
    Update,
    Set,
    Destroy,
}

/// One line of a history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: F,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Nanoseconds from one clock, non-decreasing along the file.
    pub time: u64,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok {
        version: Option<u32>,
        value: Option<String>,
    },
    Fail(String),
    /// Unknown: it may have taken effect at any point after its invocation, or never.
    Info,
}

/// An invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Position among all operations of the history (invocation order).
    pub id: usize,
    pub process: u64,
    pub f: F,
    pub key: String,
    pub value: Option<String>,
    pub ttl: u64,
    pub if_version: Option<u32>,
    pub outcome: Outcome,
    pub invoke_time: u64,
    /// `None` for `info`: it never completed.
    pub complete_time: Option<u64>,
    /// Line numbers (1-based) of its invocation and completion.
    pub invoke_line: usize,
    pub complete_line: Option<usize>,
}

/// Why a file is not a history.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Parses JSON Lines into operations, checking the format's rules: one operation in
/// flight per process, completions match their invocation, time never goes back,
/// nothing after an `info`.
pub fn parse(text: &str) -> Result<Vec<Op>, Malformed> {
    let mut ops: Vec<Op> = Vec::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut crashed: HashMap<u64, usize> = HashMap::new();
    let mut last_time = 0;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Malformed {
            line: line_no,
            reason,
        };
        let e: Event = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if e.time < last_time {
            return Err(bad(format!("time {} goes back from {}", e.time, last_time)));
        }
        last_time = e.time;
        if let Some(at) = crashed.get(&e.process) {
            return Err(bad(format!(
                "process {} acts after its info on line {at}",
                e.process
            )));
        }
        match e.kind {
            EventType::Invoke => {
                if open.contains_key(&e.process) {
                    return Err(bad(format!(
                        "process {} invokes with an operation in flight",
                        e.process
                    )));
                }
                if matches!(e.f, F::Create | F::Update | F::Set) && e.value.is_none() {
                    return Err(bad(format!("{:?} without a value", e.f)));
                }
                open.insert(e.process, ops.len());
                ops.push(Op {
                    id: ops.len(),
                    process: e.process,
                    f: e.f,
                    key: e.key,
                    value: e.value,
                    ttl: e.ttl.unwrap_or(0),
                    if_version: e.if_version,
                    outcome: Outcome::Info,
                    invoke_time: e.time,
                    complete_time: None,
                    invoke_line: line_no,
                    complete_line: None,
                });
            }
            kind => {
                let idx = open
                    .remove(&e.process)
                    .ok_or_else(|| bad(format!("process {} completes nothing", e.process)))?;
                let op = &mut ops[idx];
                if op.f != e.f || op.key != e.key {
                    return Err(bad(format!(
                        "completion does not match the invocation on line {}",
                        op.invoke_line
                    )));
                }
                op.outcome = match kind {
                    EventType::Ok => Outcome::Ok {
                        version: e.version,
                        value: e.value,
                    },
                    EventType::Fail => {
                        Outcome::Fail(e.error.ok_or_else(|| bad("fail without error".into()))?)
                    }
                    _ => {
                        crashed.insert(e.process, line_no);
                        Outcome::Info
                    }
                };
                if kind != EventType::Info {
                    op.complete_time = Some(e.time);
                    op.complete_line = Some(line_no);
                }
            }
        }
    }
    // Operations still open at the end never completed: unknown, like `info`.
    Ok(ops)
}

/// Writes events as JSON Lines.
pub fn to_json_line(e: &Event) -> String {
    serde_json::to_string(e).expect("an event serialises")
}
