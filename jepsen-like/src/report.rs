//! Explaining a verdict: text for terminals, a self-contained HTML timeline for people.

use crate::checker::{KeyFailure, Verdict};
use crate::history::{Op, Outcome};
use std::fmt::Write;

/// One operation as a line of text.
pub fn describe_op(op: &Op) -> String {
    let mut s =
        format!("line {}: process {} {:?}", op.invoke_line, op.process, op.f).to_lowercase();
    if let Some(v) = &op.value {
        let _ = write!(s, " {v:?}");
    }
    if op.ttl > 0 {
        let _ = write!(s, " ttl {}", op.ttl);
    }
    if let Some(v) = op.if_version {
        let _ = write!(s, " if_version {v}");
    }
    match &op.outcome {
        Outcome::Ok { version, value } => {
            s.push_str(" -> ok");
            if let Some(v) = version {
                let _ = write!(s, " version {v}");
            }
            if let Some(v) = value {
                let _ = write!(s, " value {v:?}");
            }
        }
        Outcome::Fail(e) => {
            let _ = write!(s, " -> fail {e}");
        }
        Outcome::Info => s.push_str(" -> unknown"),
    }
    s
}

/// The verdict as text; its first line is `valid`, `invalid` or `unknown`.
pub fn text(verdict: &Verdict, ops: &[Op]) -> String {
    match verdict {
        Verdict::Valid => format!(
            "valid\n{} operations on {} keys are linearizable\n",
            ops.len(),
            key_count(ops)
        ),
        Verdict::Unknown { undecided } => {
            format!(
                "unknown\ntime or memory limit reached with {} of {} keys undecided (first: {})\n",
                undecided.len(),
                key_count(ops),
                undecided.first().map(String::as_str).unwrap_or("-")
            )
        }
        Verdict::Invalid(f) => {
            let mut s = format!(
                "invalid\nkey {:?} ({} operations) is not linearizable\n",
                f.key, f.ops
            );
            let _ = match &f.why {
                Some(_) => writeln!(s, "these take effect in this order (real time):"),
                None => writeln!(
                    s,
                    "longest linearizable prefix ({} operations, in linearization order):",
                    f.prefix.len()
                ),
            };
            for id in &f.prefix {
                let _ = writeln!(s, "  {}", describe_op(&ops[*id]));
            }
            let _ = writeln!(s, "cannot place: {}", describe_op(&ops[f.stuck]));
            let _ = match &f.why {
                Some(why) => writeln!(s, "why: {why}"),
                None => writeln!(s, "states it could have seen: {}", f.states.join("; ")),
            };
            s
        }
    }
}

fn key_count(ops: &[Op]) -> usize {
    ops.iter()
        .map(|o| o.key.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page: the verdict, and for an invalid history a timeline of
/// the failing key (one lane per process, a bar from invocation to completion, the
/// operation that cannot be placed in red, the linearizable prefix numbered).
pub fn html(verdict: &Verdict, ops: &[Op]) -> String {
    let summary = text(verdict, ops);
    let mut body = String::new();
    if let Verdict::Invalid(f) = verdict {
        body = timeline(f, ops);
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>jepsen-like report</title><style>\
         body{{font-family:sans-serif;margin:20px}} pre{{background:#f4f4f4;padding:10px}}\
         .ok{{fill:#8fd18f}} .fail{{fill:#f2c46d}} .info{{fill:#bbb}} .stuck{{fill:#e0453a}}\
         text{{font-size:11px;font-family:monospace}}</style></head><body>\
         <h1>Linearizability check</h1><pre>{}</pre>{}</body></html>\n",
        escape(&summary),
        body
    )
}

fn timeline(f: &KeyFailure, ops: &[Op]) -> String {
    let key_ops: Vec<&Op> = ops.iter().filter(|o| o.key == f.key).collect();
    let mut processes: Vec<u64> = key_ops.iter().map(|o| o.process).collect();
    processes.sort_unstable();
    processes.dedup();
    let t0 = key_ops.iter().map(|o| o.invoke_time).min().unwrap_or(0);
    let t1 = key_ops
        .iter()
        .map(|o| o.complete_time.unwrap_or(o.invoke_time))
        .max()
        .unwrap_or(t0)
        .max(t0 + 1);
    let (left, width, lane) = (90.0, 1100.0, 34.0);
    let x = |t: u64| left + (t.saturating_sub(t0)) as f64 / (t1 - t0) as f64 * width;
    let height = lane * processes.len() as f64 + 40.0;
    let mut svg = format!("<h2>Key {} — timeline</h2><svg width=\"{}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">", escape(&f.key), left + width + 60.0);
    for (i, p) in processes.iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{}\">process {p}</text>",
            20.0 + lane * i as f64 + 14.0
        );
    }
    for op in &key_ops {
        let lane_i = processes.iter().position(|p| *p == op.process).unwrap_or(0);
        let y = 20.0 + lane * lane_i as f64;
        let end = op.complete_time.map(x).unwrap_or(left + width + 50.0);
        let class = if op.id == f.stuck {
            "stuck"
        } else {
            match op.outcome {
                Outcome::Ok { .. } => "ok",
                Outcome::Fail(_) => "fail",
                Outcome::Info => "info",
            }
        };
        let order = f
            .prefix
            .iter()
            .position(|id| *id == op.id)
            .map(|i| format!("#{} ", i + 1))
            .unwrap_or_default();
        let label = escape(&format!(
            "{order}{}",
            // "line N: process P rest" -> "rest"
            describe_op(op)
                .split_once(": process ")
                .and_then(|(_, r)| r.split_once(' '))
                .map(|(_, r)| r.to_string())
                .unwrap_or_default()
        ));
        let _ = write!(
            svg,
            "<g><title>{}</title><rect class=\"{class}\" x=\"{:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"22\" rx=\"3\"/><text x=\"{:.1}\" y=\"{}\">{}</text></g>",
            escape(&describe_op(op)),
            x(op.invoke_time),
            (end - x(op.invoke_time)).max(3.0),
            x(op.invoke_time) + 2.0,
            y + 15.0,
            label.chars().take(60).collect::<String>()
        );
    }
    svg.push_str("</svg><p>Green: ok; amber: failed; grey: unknown (drawn to the end); red: the operation that cannot be placed. #n: position in the longest linearizable prefix.</p>");
    svg
}
