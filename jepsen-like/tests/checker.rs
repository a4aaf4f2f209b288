//! The checker against hand-written histories, generated valid histories, and a
//! brute-force checker on small ones.

use jepsen_like::checker::{check, Verdict};
use jepsen_like::history::{parse, to_json_line, Event, EventType, F};
use jepsen_like::model::Model;
use jepsen_like::synth::{generate, mutate, reference, Spec};
use proptest::prelude::*;
use std::time::Duration;

const S: u64 = 1_000_000_000;

/// `(process, type, f, value, version/if_version, error, time_s)`.
type Row<'a> = (
    u64,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<u32>,
    Option<&'a str>,
    u64,
);

/// A history of rows, all on key "k".
fn h(rows: &[Row]) -> String {
    rows.iter()
        .map(|(p, t, f, value, version, error, time)| {
            let kind = match *t {
                "invoke" => EventType::Invoke,
                "ok" => EventType::Ok,
                "fail" => EventType::Fail,
                _ => EventType::Info,
            };
            let f = match *f {
                "create" => F::Create,
                "get" => F::Get,
                "update" => F::Update,
                "set" => F::Set,
                _ => F::Destroy,
            };
            let mut e = Event {
                process: *p,
                kind,
                f,
                key: "k".into(),
                value: value.map(String::from),
                ttl: None,
                if_version: None,
                version: None,
                error: error.map(String::from),
                time: time * S,
            };
            if kind == EventType::Invoke && f == F::Update {
                e.if_version = *version;
            } else if kind == EventType::Ok {
                e.version = *version;
            }
            to_json_line(&e) + "\n"
        })
        .collect()
}

fn verdict(text: &str) -> Verdict {
    check(
        &parse(text).unwrap(),
        Model::default(),
        Duration::from_secs(10),
    )
}

fn is_valid(text: &str) -> bool {
    match verdict(text) {
        Verdict::Valid => true,
        Verdict::Invalid(_) => false,
        Verdict::Unknown { .. } => panic!("unknown"),
    }
}

#[test]
fn sequential_lifecycle_is_valid() {
    assert!(is_valid(&h(&[
        (0, "invoke", "create", Some("a"), None, None, 1),
        (0, "ok", "create", None, Some(1), None, 2),
        (0, "invoke", "get", None, None, None, 3),
        (0, "ok", "get", Some("a"), Some(1), None, 4),
        (0, "invoke", "update", Some("b"), Some(1), None, 5),
        (0, "ok", "update", None, Some(2), None, 6),
        (0, "invoke", "update", Some("c"), Some(1), None, 7),
        (0, "fail", "update", None, None, Some("VersionConflict"), 8),
        (0, "invoke", "destroy", None, None, None, 9),
        (0, "ok", "destroy", None, None, None, 10),
        (0, "invoke", "get", None, None, None, 11),
        (0, "fail", "get", None, None, Some("NoKey"), 12),
    ])));
}

#[test]
fn stale_read_is_invalid() {
    assert!(!is_valid(&h(&[
        (0, "invoke", "create", Some("a"), None, None, 1),
        (0, "ok", "create", None, Some(1), None, 2),
        (0, "invoke", "set", Some("b"), None, None, 3),
        (0, "ok", "set", None, Some(2), None, 4),
        (1, "invoke", "get", None, None, None, 5),
        (1, "ok", "get", Some("a"), Some(1), None, 6),
    ])));
}

#[test]
fn lost_update_is_invalid() {
    // Two sets both claim version 2.
    assert!(!is_valid(&h(&[
        (0, "invoke", "create", Some("a"), None, None, 1),
        (0, "ok", "create", None, Some(1), None, 2),
        (0, "invoke", "set", Some("b"), None, None, 3),
        (1, "invoke", "set", Some("c"), None, None, 3),
        (0, "ok", "set", None, Some(2), None, 4),
        (1, "ok", "set", None, Some(2), None, 4),
    ])));
}

#[test]
fn a_create_that_succeeds_twice_is_invalid_but_concurrent_dupkey_is_fine() {
    assert!(!is_valid(&h(&[
        (0, "invoke", "create", Some("a"), None, None, 1),
        (1, "invoke", "create", Some("b"), None, None, 1),
        (0, "ok", "create", None, Some(1), None, 2),
        (1, "ok", "create", None, Some(1), None, 2),
    ])));
    assert!(is_valid(&h(&[
        (0, "invoke", "create", Some("a"), None, None, 1),
        (1, "invoke", "create", Some("b"), None, None, 1),
        (0, "ok", "create", None, Some(1), None, 2),
        (1, "fail", "create", None, None, Some("DupKey"), 2),
        (1, "invoke", "get", None, None, None, 3),
        (1, "ok", "get", Some("a"), Some(1), None, 4),
    ])));
}

#[test]
fn conditional_update_against_the_wrong_version_is_invalid() {
    assert!(!is_valid(&h(&[
        (0, "invoke", "create", Some("a"), None, None, 1),
        (0, "ok", "create", None, Some(1), None, 2),
        (0, "invoke", "set", Some("b"), None, None, 3),
        (0, "ok", "set", None, Some(2), None, 4),
        (1, "invoke", "update", Some("c"), Some(1), None, 5),
        (1, "ok", "update", None, Some(3), None, 6),
    ])));
}

#[test]
fn reading_an_expired_record_is_invalid() {
    let mut text = String::new();
    for (kind, time, version, value) in [
        (EventType::Invoke, 0, None, Some("a")),
        (EventType::Ok, S / 10, Some(1), None),
    ] {
        let e = Event {
            process: 0,
            kind,
            f: F::Create,
            key: "k".into(),
            value: value.map(String::from),
            ttl: Some(2),
            if_version: None,
            version,
            error: None,
            time,
        };
        text += &(to_json_line(&e) + "\n");
    }
    let get = |kind, time, version: Option<u32>, value: Option<&str>, error: Option<&str>| {
        to_json_line(&Event {
            process: 1,
            kind,
            f: F::Get,
            key: "k".into(),
            value: value.map(String::from),
            ttl: None,
            if_version: None,
            version,
            error: error.map(String::from),
            time,
        }) + "\n"
    };
    // Ten seconds after a two-second TTL: still there is a violation...
    let stale = text.clone()
        + &get(EventType::Invoke, 10 * S, None, None, None)
        + &get(EventType::Ok, 11 * S, Some(1), Some("a"), None);
    assert!(!is_valid(&stale));
    // ...absent is right, and within the clock uncertainty either answer is.
    let gone = text.clone()
        + &get(EventType::Invoke, 10 * S, None, None, None)
        + &get(EventType::Fail, 11 * S, None, None, Some("NoKey"));
    assert!(is_valid(&gone));
    let edge = text
        + &get(EventType::Invoke, 2 * S, None, None, None)
        + &get(EventType::Ok, 2 * S + 1, Some(1), Some("a"), None);
    assert!(is_valid(&edge));
}

#[test]
fn an_indeterminate_write_may_appear_later_but_not_flicker() {
    let base = [
        (0, "invoke", "create", Some("a"), None, None, 1),
        (0, "ok", "create", None, Some(1), None, 2),
        (2, "invoke", "set", Some("x"), None, None, 3),
        (2, "info", "set", None, None, Some("timeout"), 4),
        (1, "invoke", "get", None, None, None, 5),
        (1, "ok", "get", Some("a"), Some(1), None, 6),
        (1, "invoke", "get", None, None, None, 7),
        (1, "ok", "get", Some("x"), Some(2), None, 8),
    ];
    assert!(is_valid(&h(&base)));
    let mut flicker = base.to_vec();
    flicker.extend([
        (1, "invoke", "get", None, None, None, 9),
        (1, "ok", "get", Some("a"), Some(1), None, 10),
    ]);
    flicker.extend([
        (1, "invoke", "get", None, None, None, 11),
        (1, "ok", "get", Some("x"), Some(2), None, 12),
    ]);
    assert!(!is_valid(&h(&flicker)));
}

#[test]
fn an_indeterminate_write_nobody_read_may_still_explain_a_version() {
    // "y" is never read, but the update's version 3 needs it to have taken effect:
    // the search that first leaves unread unknown writes out must fall back.
    let rows = [
        (0, "invoke", "create", Some("a"), None, None, 1),
        (0, "ok", "create", None, Some(1), None, 2),
        (2, "invoke", "set", Some("y"), None, None, 3),
        (2, "info", "set", None, None, Some("timeout"), 4),
        (1, "invoke", "update", Some("z"), None, None, 5),
        (1, "ok", "update", None, Some(3), None, 6),
        (1, "invoke", "get", None, None, None, 7),
        (1, "ok", "get", Some("z"), Some(3), None, 8),
    ];
    assert!(is_valid(&h(&rows)));
    // Without the unknown write, version 3 cannot be explained.
    let without: Vec<Row> = rows.iter().filter(|r| r.0 != 2).copied().collect();
    assert!(!is_valid(&h(&without)));
}

#[test]
fn an_invalid_report_names_the_key_prefix_and_operation() {
    let text = h(&[
        (0, "invoke", "create", Some("a"), None, None, 1),
        (0, "ok", "create", None, Some(1), None, 2),
        (1, "invoke", "get", None, None, None, 3),
        (1, "fail", "get", None, None, Some("NoKey"), 4),
    ]);
    let ops = parse(&text).unwrap();
    let Verdict::Invalid(f) = check(&ops, Model::default(), Duration::from_secs(5)) else {
        panic!("expected invalid")
    };
    assert_eq!(
        (f.key.as_str(), f.prefix.clone(), f.stuck),
        ("k", vec![0], 1)
    );
    assert_eq!(f.states, vec!["value \"a\" version 1".to_string()]);
    let report = jepsen_like::report::text(&Verdict::Invalid(f), &ops);
    assert!(report.starts_with("invalid\n"), "{report}");
}

#[test]
fn malformed_files_name_the_line() {
    let e = parse("{\"process\":0,\"type\":\"invoke\",\"f\":\"get\",\"key\":\"k\",\"time\":5}\n{\"process\":0,\"type\":\"invoke\",\"f\":\"get\",\"key\":\"k\",\"time\":6}\n").unwrap_err();
    assert_eq!(e.line, 2);
    assert_eq!(parse("not json").unwrap_err().line, 1);
    let back = "{\"process\":0,\"type\":\"invoke\",\"f\":\"get\",\"key\":\"k\",\"time\":5}\n{\"process\":0,\"type\":\"ok\",\"f\":\"get\",\"key\":\"k\",\"time\":4}\n";
    assert_eq!(parse(back).unwrap_err().line, 2);
}

// ---- generated histories (see `jepsen_like::synth`) --------------------------------

fn spec() -> impl Strategy<Value = Spec> {
    spec_losing(0.1)
}

/// Operations of which a share `lost` have an unknown outcome.
fn spec_losing(lost: f64) -> impl Strategy<Value = Spec> {
    (
        0u64..4,
        0u8..5,
        proptest::option::of(1u32..4),
        0u64..40,
        0u64..12,
        any::<u64>(),
        proptest::bool::weighted(lost),
    )
        .prop_map(|(process, kind, if_version, start, len, at, lost)| Spec {
            process,
            key: 0,
            kind,
            if_version,
            start,
            len,
            at,
            lost,
        })
}

/// Whether some order of the operations, consistent with real time, explains every
/// observation (unknown operations may be left out; a field a result lacks constrains
/// nothing). Exponential: small histories only.
fn brute_force(text: &str) -> bool {
    let ops = parse(text).unwrap();
    fn search(
        ops: &[jepsen_like::history::Op],
        done: &mut Vec<bool>,
        state: Option<(String, u32)>,
    ) -> bool {
        use jepsen_like::history::Outcome;
        let pending: Vec<usize> = (0..ops.len()).filter(|&i| !done[i]).collect();
        if pending.iter().all(|&i| ops[i].outcome == Outcome::Info) {
            return true;
        }
        for &i in &pending {
            // i may go next only if no pending operation completed before i was invoked.
            if pending
                .iter()
                .any(|&j| ops[j].complete_line.is_some_and(|c| c < ops[i].invoke_line))
            {
                continue;
            }
            let mut s = state.clone();
            let (kind, version, value, error) = reference(
                &mut s,
                ops[i].f,
                ops[i].value.as_deref().unwrap_or(""),
                ops[i].if_version,
            );
            let fits = match &ops[i].outcome {
                Outcome::Info => true,
                Outcome::Ok {
                    version: v,
                    value: val,
                } => {
                    kind == EventType::Ok
                        && (v.is_none() || *v == version)
                        && (ops[i].f != F::Get || val.is_none() || *val == value)
                }
                Outcome::Fail(e) => kind == EventType::Fail && error == Some(e.as_str()),
            };
            if fits {
                done[i] = true;
                if search(ops, done, s) {
                    return true;
                }
                done[i] = false;
            }
        }
        false
    }
    search(&ops, &mut vec![false; ops.len()], None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn generated_histories_are_valid(specs in proptest::collection::vec(spec(), 1..60)) {
        let text = generate(&specs);
        prop_assert!(is_valid(&text), "{}", text);
    }

    #[test]
    fn mutations_are_caught_exactly_when_brute_force_says_so(specs in proptest::collection::vec(spec(), 1..7), which in any::<usize>(), how in any::<u8>()) {
        let text = mutate(&generate(&specs), which, how);
        prop_assert_eq!(is_valid(&text), brute_force(&text), "{}", text);
    }

    /// Many unknown outcomes exercise what the search prunes on their account (their
    /// classes, the memo's usage dominance) and the read-only operations it places
    /// without alternatives.
    #[test]
    fn mutations_with_many_unknowns_match_brute_force(specs in proptest::collection::vec(spec_losing(0.3), 1..9), which in any::<usize>(), how in any::<u8>()) {
        let text = mutate(&generate(&specs), which, how);
        prop_assert_eq!(is_valid(&text), brute_force(&text), "{}", text);
    }
}

/// Sets of `values` by processes 100, 101, …, invoked at `invoked` and reported
/// unknown at `lost` (seconds).
fn push_unknown_sets<'a>(rows: &mut Vec<Row<'a>>, values: &'a [String], invoked: u64, lost: u64) {
    for (i, v) in values.iter().enumerate() {
        let set = (
            100 + i as u64,
            "invoke",
            "set",
            Some(v.as_str()),
            None,
            None,
            invoked,
        );
        rows.push(set);
    }
    for i in 0..values.len() as u64 {
        rows.push((100 + i, "info", "set", None, None, None, lost));
    }
}

/// A key written by 30 unknown sets nobody read, then an update reporting the version
/// that `taken` of them imply. Deciding it means finding which of the sets took
/// effect: C(30, taken) subsets to a search that tells the sets apart.
fn many_unknown_sets(taken: u32) -> String {
    let owned: Vec<String> = (0..30).map(|i| format!("lost{i}")).collect();
    let mut rows: Vec<Row> = vec![
        (0, "invoke", "create", Some("a"), None, None, 1),
        (0, "ok", "create", None, Some(1), None, 2),
    ];
    push_unknown_sets(&mut rows, &owned, 3, 4);
    rows.push((1, "invoke", "update", Some("b"), None, None, 5));
    rows.push((1, "ok", "update", None, Some(2 + taken), None, 6));
    rows.push((2, "invoke", "get", None, None, None, 7));
    rows.push((2, "ok", "get", Some("b"), Some(2 + taken), None, 8));
    h(&rows)
}

#[test]
fn many_alike_unknown_writes_are_decided_quickly() {
    let decide = |text: &str| {
        let ops = parse(text).unwrap();
        let started = std::time::Instant::now();
        let verdict = check(&ops, Model::default(), Duration::from_secs(20));
        (verdict, started.elapsed())
    };
    let (verdict, took) = decide(&many_unknown_sets(17));
    assert!(
        matches!(verdict, Verdict::Valid),
        "{verdict:?} after {took:?}"
    );
    // More than 30 sets would have to have taken effect: not linearizable.
    let (verdict, took) = decide(&many_unknown_sets(31));
    assert!(
        matches!(verdict, Verdict::Invalid(_)),
        "{verdict:?} after {took:?}"
    );
}

/// A read of a value that an acknowledged set overwrote before the read began is
/// proved invalid without a search, behind 30 unknown sets that would otherwise make
/// the search visit every subset of them; a read concurrent with the overwrite is no
/// such proof (and is valid).
#[test]
fn a_read_of_an_overwritten_value_is_invalid_at_once() {
    let mut rows: Vec<Row> = vec![
        (0, "invoke", "set", Some("x"), None, None, 1),
        (0, "ok", "set", None, Some(1), None, 2),
    ];
    let lost: Vec<String> = (0..30).map(|i| format!("lost{i}")).collect();
    push_unknown_sets(&mut rows, &lost, 3, 3);
    rows.extend([
        (1, "invoke", "set", Some("y"), None, None, 4),
        (1, "ok", "set", None, None, None, 5),
        (2, "invoke", "get", None, None, None, 6),
        (2, "ok", "get", Some("x"), Some(1), None, 7),
    ]);
    let started = std::time::Instant::now();
    let Verdict::Invalid(f) = verdict(&h(&rows)) else {
        panic!("a stale read passed");
    };
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        f.why.is_some_and(|w| w.contains("had overwritten")),
        "no reason given"
    );
    assert_eq!(f.prefix.len(), 2, "the write, then what overwrote it");
    // The same read begun before the overwrite completed may have come first.
    let n = rows.len();
    rows[n - 2].6 = 5;
    rows.swap(n - 3, n - 2);
    assert!(is_valid(&h(&rows)));
}

/// A read that reports its value at another version than the value's write did is
/// proved invalid without a search.
#[test]
fn a_value_at_two_versions_is_invalid_at_once() {
    let rows: Vec<Row> = vec![
        (0, "invoke", "set", Some("x"), None, None, 1),
        (1, "invoke", "get", None, None, None, 1),
        (0, "ok", "set", None, Some(1), None, 2),
        (1, "ok", "get", Some("x"), Some(2), None, 3),
    ];
    let Verdict::Invalid(f) = verdict(&h(&rows)) else {
        panic!("a value at two versions passed");
    };
    assert!(
        f.why.is_some_and(|w| w.contains("keeps the version")),
        "no reason given"
    );
}

#[test]
fn a_read_of_a_value_never_written_is_invalid_at_once() {
    let phantom: Vec<Row> = vec![
        (0, "invoke", "set", Some("x"), None, None, 1),
        (0, "ok", "set", None, Some(1), None, 2),
        (1, "invoke", "get", None, None, None, 3),
        (1, "ok", "get", Some("y"), Some(1), None, 4),
    ];
    let from_the_future: Vec<Row> = vec![
        (1, "invoke", "get", None, None, None, 1),
        (1, "ok", "get", Some("x"), Some(1), None, 2),
        (0, "invoke", "set", Some("x"), None, None, 3),
        (0, "ok", "set", None, Some(1), None, 4),
    ];
    let failed: Vec<Row> = vec![
        (0, "invoke", "create", Some("x"), None, None, 1),
        (0, "fail", "create", None, None, Some("DupKey"), 2),
        (1, "invoke", "get", None, None, None, 3),
        (1, "ok", "get", Some("x"), Some(1), None, 4),
    ];
    for (rows, says) in [
        (phantom, "no write"),
        (failed, "failed"),
        (from_the_future, "before the write"),
    ] {
        let Verdict::Invalid(f) = verdict(&h(&rows)) else {
            panic!("a read of a value never written passed");
        };
        assert!(f.why.is_some_and(|w| w.contains(says)), "no reason given");
    }
}

#[test]
fn an_outcome_no_state_explains_is_invalid_at_once() {
    let rows: Vec<Row> = vec![
        (0, "invoke", "set", Some("x"), None, None, 1),
        (0, "fail", "set", None, None, Some("NoKey"), 2),
    ];
    let Verdict::Invalid(f) = verdict(&h(&rows)) else {
        panic!("a set that found no key passed");
    };
    assert!(
        f.why.is_some_and(|w| w.contains("in any state")),
        "no reason given"
    );
}
