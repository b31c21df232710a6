//! The checker on textbook histories: one property per test.
//!
//! Histories are written with a small vocabulary: `put(client, (invoked, completed), value)`,
//! `get(..)`, `delete(..)`, `cas(..)`, all on key "x" unless moved with `.on(key)`, and made
//! `.failed()` or `.unknown()`.

use bytes::Bytes;

use super::*;

type Span = (u64, u64);

fn operation(client: u64, (invoked_ns, completed_ns): Span, op: Op) -> Operation {
    Operation {
        client,
        invoked_ns,
        completed_ns,
        op,
    }
}

fn value(v: Option<&'static str>) -> Option<Bytes> {
    v.map(|v| Bytes::from_static(v.as_bytes()))
}

fn x() -> Bytes {
    Bytes::from_static(b"x")
}

fn put(client: u64, span: Span, v: &'static str) -> Operation {
    let op = Op::Put {
        key: x(),
        value: Bytes::from_static(v.as_bytes()),
        outcome: Outcome::Ok(()),
    };
    operation(client, span, op)
}

fn get(client: u64, span: Span, v: Option<&'static str>) -> Operation {
    let op = Op::Get {
        key: x(),
        outcome: Outcome::Ok(value(v)),
    };
    operation(client, span, op)
}

fn delete(client: u64, span: Span, existed: bool) -> Operation {
    let op = Op::Delete {
        key: x(),
        outcome: Outcome::Ok(existed),
    };
    operation(client, span, op)
}

fn cas(
    client: u64,
    span: Span,
    expected: Option<&'static str>,
    new: Option<&'static str>,
    result: CasResult,
) -> Operation {
    let op = Op::CompareAndSwap {
        key: x(),
        expected: value(expected),
        new: value(new),
        outcome: Outcome::Ok(result),
    };
    operation(client, span, op)
}

fn held(v: Option<&'static str>) -> CasResult {
    CasResult::CompareFailed { current: value(v) }
}

/// Test-only edits of an operation.
trait Edit {
    fn failed(self) -> Self;
    fn unknown(self) -> Self;
    fn on(self, key: &'static str) -> Self;
}

impl Edit for Operation {
    fn failed(mut self) -> Self {
        set_outcome(&mut self.op, false);
        self
    }

    fn unknown(mut self) -> Self {
        set_outcome(&mut self.op, true);
        self
    }

    fn on(mut self, k: &'static str) -> Self {
        let key = match &mut self.op {
            Op::Put { key, .. }
            | Op::Get { key, .. }
            | Op::Delete { key, .. }
            | Op::CompareAndSwap { key, .. } => key,
        };
        *key = Bytes::from_static(k.as_bytes());
        self
    }
}

fn set_outcome(op: &mut Op, unknown: bool) {
    fn pick<T>(unknown: bool) -> Outcome<T> {
        if unknown {
            Outcome::Unknown
        } else {
            Outcome::Failed
        }
    }
    match op {
        Op::Put { outcome, .. } => *outcome = pick(unknown),
        Op::Get { outcome, .. } => *outcome = pick(unknown),
        Op::Delete { outcome, .. } => *outcome = pick(unknown),
        Op::CompareAndSwap { outcome, .. } => *outcome = pick(unknown),
    }
}

#[track_caller]
fn assert_linearizable(history: &[Operation]) {
    let verdict = check(history).expect("a well-formed history");
    assert!(
        verdict.is_linearizable(),
        "expected linearizable, got {verdict}"
    );
}

/// Asserts the history fails and that its report holds together: the culprits are in the
/// excerpt, and the excerpt on its own fails too.
#[track_caller]
fn assert_violation(history: &[Operation]) -> Violation {
    let verdict = check(history).expect("a well-formed history");
    let Verdict::NotLinearizable(violation) = verdict else {
        panic!("expected a violation, got {verdict}");
    };
    println!("{violation}");
    assert!(!violation.culprits.is_empty());
    assert!(violation.earliest, "the first failure was found");
    for culprit in &violation.culprits {
        assert!(
            violation.excerpt.contains(culprit),
            "culprit in the excerpt"
        );
        assert_eq!(culprit.completed_ns, violation.failed_at_ns);
    }
    let again = check(&violation.excerpt).expect("well-formed");
    assert!(
        matches!(again, Verdict::NotLinearizable(_)),
        "the excerpt fails on its own, got {again}"
    );
    *violation
}

// Baselines.

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn sequential_history_of_every_operation_is_linearizable() {
    assert_linearizable(&[
        get(1, (0, 1), None),
        put(1, (2, 3), "a"),
        get(2, (4, 5), Some("a")),
        cas(1, (6, 7), Some("a"), Some("b"), CasResult::Swapped),
        cas(2, (8, 9), Some("a"), Some("c"), held(Some("b"))),
        delete(1, (10, 11), true),
        delete(2, (12, 13), false),
        cas(1, (14, 15), None, Some("d"), CasResult::Swapped),
        get(2, (16, 17), Some("d")),
    ]);
}

#[test]
fn a_read_of_a_value_never_written_is_detected() {
    let v = assert_violation(&[put(1, (0, 10), "a"), get(2, (20, 30), Some("z"))]);
    assert_eq!(v.culprits, vec![get(2, (20, 30), Some("z"))]);
}

// Real-time order.

#[test]
fn stale_read_after_a_completed_write_is_detected() {
    let v = assert_violation(&[
        put(1, (0, 10), "a"),
        put(2, (20, 30), "b"),
        get(3, (40, 50), Some("a")),
    ]);
    assert_eq!(v.culprits, vec![get(3, (40, 50), Some("a"))]);
    assert_eq!(v.excerpt.len(), 3);
    assert!(v.minimal);
}

#[test]
fn read_of_a_write_not_yet_invoked_is_detected() {
    let v = assert_violation(&[get(1, (0, 10), Some("a")), put(2, (20, 30), "a")]);
    assert_eq!(v.culprits, vec![get(1, (0, 10), Some("a"))]);
    assert!(
        v.excerpt.contains(&put(2, (20, 30), "a")),
        "the later put is shown for context"
    );
}

#[test]
fn two_reads_going_backwards_in_time_are_detected() {
    // Both reads overlap the put of "b", but the first completed before the second began: once
    // one read has seen "b", no later read may see "a".
    let v = assert_violation(&[
        put(1, (0, 10), "a"),
        put(1, (20, 100), "b"),
        get(2, (30, 40), Some("b")),
        get(3, (50, 60), Some("a")),
    ]);
    assert_eq!(v.culprits, vec![get(3, (50, 60), Some("a"))]);
}

#[test]
fn overlapping_reads_may_see_a_write_in_either_order() {
    // The reads overlap each other: the one that saw the old value may linearize first.
    assert_linearizable(&[
        put(1, (0, 10), "a"),
        put(1, (20, 100), "b"),
        get(2, (30, 60), Some("b")),
        get(3, (40, 50), Some("a")),
    ]);
}

#[test]
fn lost_acknowledged_write_is_detected() {
    let v = assert_violation(&[
        put(1, (0, 10), "a"),
        put(2, (20, 30), "b"),
        get(3, (40, 50), None),
    ]);
    assert_eq!(v.culprits, vec![get(3, (40, 50), None)]);
}

#[test]
fn duplicate_apply_reappearing_value_is_detected() {
    let v = assert_violation(&[
        put(1, (0, 10), "a"),
        put(1, (20, 30), "b"),
        get(2, (40, 50), Some("b")),
        get(2, (60, 70), Some("a")),
    ]);
    assert_eq!(v.culprits, vec![get(2, (60, 70), Some("a"))]);
}

#[test]
fn a_value_written_twice_may_reappear() {
    assert_linearizable(&[
        put(1, (0, 10), "a"),
        put(1, (20, 30), "b"),
        get(2, (40, 50), Some("b")),
        put(1, (60, 70), "a"),
        get(2, (80, 90), Some("a")),
    ]);
}

#[test]
fn operations_touching_at_one_instant_are_concurrent() {
    assert_linearizable(&[put(1, (0, 10), "a"), get(2, (10, 20), None)]);
    assert_violation(&[put(1, (0, 10), "a"), get(2, (11, 20), None)]);
}

// Concurrency.

#[test]
fn read_concurrent_with_a_write_may_see_old_or_new() {
    let before = put(1, (0, 10), "a");
    let write = put(1, (20, 60), "b");
    assert_linearizable(&[before.clone(), write.clone(), get(2, (30, 40), Some("a"))]);
    assert_linearizable(&[before, write, get(2, (30, 40), Some("b"))]);
}

#[test]
fn overlapping_writes_may_linearize_in_either_order() {
    let writes = [put(1, (0, 50), "a"), put(2, (10, 40), "b")];
    for last in ["a", "b"] {
        let mut history = writes.to_vec();
        history.push(get(3, (60, 70), Some(last)));
        assert_linearizable(&history);
    }
    let mut history = writes.to_vec();
    history.push(get(3, (60, 70), None));
    assert_violation(&history);
}

#[test]
fn overlapping_writes_settle_on_one_order() {
    // Reads after both writes must agree on which was last.
    assert_violation(&[
        put(1, (0, 50), "a"),
        put(2, (10, 40), "b"),
        get(3, (60, 70), Some("a")),
        get(4, (80, 90), Some("b")),
    ]);
}

// Compare-and-swap.

#[test]
fn compare_and_swap_swaps_only_from_the_expected_value() {
    assert_linearizable(&[
        cas(1, (0, 10), None, Some("a"), CasResult::Swapped),
        cas(2, (20, 30), Some("a"), Some("b"), CasResult::Swapped),
        get(3, (40, 50), Some("b")),
    ]);
    assert_violation(&[
        put(1, (0, 10), "a"),
        cas(2, (20, 30), Some("z"), Some("b"), CasResult::Swapped),
    ]);
}

#[test]
fn two_swaps_from_one_value_cannot_both_succeed() {
    assert_violation(&[
        put(1, (0, 10), "a"),
        cas(2, (20, 40), Some("a"), Some("b"), CasResult::Swapped),
        cas(3, (25, 35), Some("a"), Some("c"), CasResult::Swapped),
    ]);
}

#[test]
fn compare_failure_may_see_a_concurrent_swap() {
    assert_linearizable(&[
        put(1, (0, 10), "a"),
        cas(2, (20, 50), Some("a"), Some("b"), CasResult::Swapped),
        cas(3, (30, 40), Some("a"), Some("c"), held(Some("b"))),
    ]);
}

#[test]
fn compare_failure_must_report_the_current_value() {
    let history = |current| {
        vec![
            put(1, (0, 10), "a"),
            cas(2, (20, 30), Some("b"), Some("c"), held(current)),
        ]
    };
    assert_linearizable(&history(Some("a")));
    assert_violation(&history(None));
    assert_violation(&history(Some("c")));
}

#[test]
fn compare_failure_when_the_value_matched_is_detected() {
    assert_violation(&[
        put(1, (0, 10), "a"),
        cas(2, (20, 30), Some("a"), Some("b"), held(Some("a"))),
    ]);
}

#[test]
fn swap_to_absent_deletes_the_key() {
    assert_linearizable(&[
        put(1, (0, 10), "a"),
        cas(1, (20, 30), Some("a"), None, CasResult::Swapped),
        get(2, (40, 50), None),
        delete(2, (60, 70), false),
    ]);
}

#[test]
fn swap_from_absent_fails_once_the_key_exists() {
    assert_violation(&[
        put(1, (0, 10), "a"),
        cas(2, (20, 30), None, Some("b"), CasResult::Swapped),
    ]);
}

// Delete.

#[test]
fn delete_reports_whether_the_key_existed() {
    assert_linearizable(&[
        delete(1, (0, 10), false),
        put(1, (20, 30), "a"),
        delete(2, (40, 50), true),
        delete(1, (60, 70), false),
        get(2, (80, 90), None),
    ]);
}

#[test]
fn delete_that_finds_a_key_never_written_is_detected() {
    assert_violation(&[delete(1, (0, 10), true)]);
}

#[test]
fn not_found_after_a_completed_put_is_detected() {
    assert_violation(&[put(1, (0, 10), "a"), delete(2, (20, 30), false)]);
}

#[test]
fn two_deletes_cannot_both_remove_one_value() {
    assert_violation(&[
        put(1, (0, 10), "a"),
        delete(2, (20, 40), true),
        delete(3, (25, 35), true),
    ]);
}

#[test]
fn read_after_a_completed_delete_sees_absent() {
    let v = assert_violation(&[
        put(1, (0, 10), "a"),
        delete(2, (20, 30), true),
        get(3, (40, 50), Some("a")),
    ]);
    assert_eq!(v.excerpt.len(), 3, "the put, the delete and the read");
}

// Unknown outcomes.

#[test]
fn unknown_write_may_have_taken_effect() {
    assert_linearizable(&[put(1, (0, 5), "a").unknown(), get(2, (100, 110), Some("a"))]);
}

#[test]
fn unknown_write_may_never_take_effect() {
    assert_linearizable(&[put(1, (0, 5), "a").unknown(), get(2, (100, 110), None)]);
}

#[test]
fn unknown_write_may_take_effect_long_after_its_client_gave_up() {
    assert_linearizable(&[
        put(1, (0, 5), "a").unknown(),
        get(2, (100, 110), None),
        get(2, (200, 210), Some("a")),
    ]);
}

#[test]
fn unknown_write_cannot_take_effect_before_its_invocation() {
    let v = assert_violation(&[get(1, (0, 10), Some("a")), put(2, (20, 30), "a").unknown()]);
    assert_eq!(v.culprits, vec![get(1, (0, 10), Some("a"))]);
}

#[test]
fn unknown_write_takes_effect_at_most_once() {
    assert_violation(&[
        put(1, (0, 5), "a").unknown(),
        get(2, (10, 20), Some("a")),
        put(2, (30, 40), "b"),
        get(2, (50, 60), Some("a")),
    ]);
}

#[test]
fn unknown_write_cannot_be_undone() {
    assert_violation(&[
        put(1, (0, 5), "a").unknown(),
        get(2, (10, 20), Some("a")),
        get(2, (30, 40), None),
    ]);
}

#[test]
fn unknown_delete_takes_effect_at_most_once() {
    // Two absences separated by a put need two deletes.
    let history = |unknown_deletes: u64| {
        let mut history = vec![put(1, (0, 10), "a")];
        for client in 0..unknown_deletes {
            history.push(delete(10 + client, (12, 15), true).unknown());
        }
        history.extend([
            get(2, (20, 30), None),
            put(1, (40, 50), "b"),
            get(2, (60, 70), None),
        ]);
        history
    };
    assert_violation(&history(1));
    assert_linearizable(&history(2));
}

#[test]
fn unknown_write_of_an_unread_value_may_be_what_a_delete_found() {
    assert_linearizable(&[put(1, (0, 5), "a").unknown(), delete(2, (10, 20), true)]);
    assert_violation(&[put(1, (0, 5), "a").failed(), delete(2, (10, 20), true)]);
}

#[test]
fn unknown_compare_and_swap_may_or_may_not_have_swapped() {
    let swap = cas(2, (20, 25), Some("a"), Some("b"), CasResult::Swapped).unknown();
    for seen in ["a", "b"] {
        assert_linearizable(&[
            put(1, (0, 10), "a"),
            swap.clone(),
            get(3, (100, 110), Some(seen)),
        ]);
    }
}

#[test]
fn unknown_delete_may_or_may_not_have_removed() {
    for seen in [Some("a"), None] {
        assert_linearizable(&[
            put(1, (0, 10), "a"),
            delete(2, (20, 25), true).unknown(),
            get(3, (100, 110), seen),
        ]);
    }
}

#[test]
fn unknown_read_constrains_nothing() {
    assert_linearizable(&[
        put(1, (0, 10), "a"),
        get(2, (20, 30), Some("zzz")).unknown(),
    ]);
}

#[test]
fn many_unknown_writes_on_one_key_stay_cheap() {
    let mut history: Vec<Operation> = (0..16)
        .map(|i| {
            let value: &'static str = ["a", "b", "c", "d"][i % 4];
            put(i as u64, (i as u64, i as u64 + 1), value)
                .unknown()
                .on("x")
        })
        .collect();
    history.push(get(100, (100, 110), Some("c")));
    history.push(get(100, (120, 130), Some("a")));
    history.push(get(100, (140, 150), None));
    // None: the store starts empty and nothing deletes, so this fails; "a" then "c" is fine.
    assert_violation(&history);
    history.pop();
    assert_linearizable(&history);
}

// Failed operations.

#[test]
fn failed_write_must_not_take_effect() {
    let v = assert_violation(&[put(1, (0, 10), "a").failed(), get(2, (20, 30), Some("a"))]);
    assert!(
        v.excerpt.contains(&put(1, (0, 10), "a").failed()),
        "the failed put is shown"
    );
}

#[test]
fn failed_write_leaves_the_old_value() {
    assert_linearizable(&[
        put(1, (0, 10), "a"),
        put(2, (20, 30), "b").failed(),
        cas(2, (40, 50), Some("b"), Some("c"), CasResult::Swapped).failed(),
        delete(2, (60, 70), true).failed(),
        get(3, (80, 90), Some("a")),
    ]);
}

#[test]
fn failed_read_constrains_nothing() {
    assert_linearizable(&[get(1, (0, 10), Some("zzz")).failed()]);
}

// Keys, budget, malformed histories.

#[test]
fn keys_are_independent() {
    assert_linearizable(&[
        put(1, (0, 10), "a").on("x"),
        get(2, (20, 30), None).on("y"),
        put(2, (40, 50), "b").on("y"),
        get(1, (60, 70), Some("a")).on("x"),
    ]);
}

#[test]
fn violation_names_the_failing_key() {
    let mut history = Vec::new();
    for (i, key) in ["k1", "k2", "k3", "k4"].into_iter().enumerate() {
        let t = i as u64 * 100;
        history.push(put(1, (t, t + 10), "a").on(key));
        history.push(get(2, (t + 20, t + 30), Some("a")).on(key));
    }
    history.push(get(3, (1000, 1010), None).on("k3"));
    let v = assert_violation(&history);
    assert_eq!(v.key, Bytes::from_static(b"k3"));
    assert_eq!(v.key_operations, 3);
    assert!(v.excerpt.iter().all(|o| o.op.key() == &v.key));
}

#[test]
fn exhausted_budget_reports_unknown() {
    let mut history: Vec<Operation> = (0..20)
        .map(|i| put(1, (i * 10, i * 10 + 5), "a").on("long"))
        .collect();
    history.push(put(1, (0, 10), "a").on("short"));
    let options = CheckOptions {
        steps_per_key_max: 10,
        explain_steps_max: 10,
    };
    let verdict = check_with(&history, &options).expect("well-formed");
    assert_eq!(
        verdict,
        Verdict::Unknown {
            keys: vec![Bytes::from_static(b"long")]
        }
    );
    assert!(verdict.to_string().contains("\"long\""));
}

#[test]
fn violation_found_within_budget_beats_an_exhausted_key() {
    let mut history: Vec<Operation> = (0..10)
        .map(|i| put(i, (i * 10, i * 10 + 5), "a").on("a-busy"))
        .collect();
    history.push(get(1, (0, 10), Some("z")).on("b-broken"));
    let options = CheckOptions {
        steps_per_key_max: 5,
        explain_steps_max: 1000,
    };
    let verdict = check_with(&history, &options).expect("well-formed");
    assert_eq!(
        verdict.violation().map(|v| v.key.clone()),
        Some(Bytes::from_static(b"b-broken"))
    );
}

#[test]
fn completion_before_invocation_is_rejected() {
    let history = [put(1, (0, 10), "a"), get(7, (30, 20), Some("a"))];
    assert_eq!(
        check(&history),
        Err(HistoryError::CompletedBeforeInvoked {
            index: 1,
            client: 7,
            invoked_ns: 30,
            completed_ns: 20
        })
    );
}

// Reports.

#[test]
fn a_long_history_shrinks_to_the_anomaly() {
    // 300 sequential puts, each read back, with one stale read in the middle.
    let mut history = Vec::new();
    let values: Vec<&'static str> = (0..300)
        .map(|i| &*Box::leak(format!("v{i}").into_boxed_str()))
        .collect();
    for (i, v) in values.iter().enumerate() {
        let t = i as u64 * 100;
        history.push(put(i as u64 % 4, (t, t + 30), v));
        history.push(get(4 + i as u64 % 3, (t + 40, t + 70), Some(v)));
    }
    history[301] = get(4, (15040, 15070), Some("v120"));
    let v = assert_violation(&history);
    assert!(v.minimal);
    assert_eq!(v.culprits, vec![get(4, (15040, 15070), Some("v120"))]);
    assert_eq!(v.excerpt.len(), 3, "{v}");
    assert_eq!(v.excerpt[0], put(0, (12000, 12030), "v120"));
}

#[test]
fn report_reads_as_a_table_and_a_timeline() {
    let v = assert_violation(&[
        put(1, (0, 10), "a"),
        put(2, (20, 30), "b"),
        put(1, (35, 36), "c").unknown(),
        get(3, (40, 50), Some("a")),
    ]);
    let report = v.to_string();
    let expected_lines = [
        "not linearizable: key \"x\" has no order of its operations that explains",
        "  client 3: get on \"x\" -> ok \"a\" (invoked at 40 ns, completed at 50 ns)",
        "    invoked  completed  client  operation  outcome",
        "          0         10       1  put \"a\"    ok",
        "         20         30       2  put \"b\"    ok",
        "  >      40         50       3  get        ok \"a\"",
        "  c1 put \"a\" -> ok  [-]",
        "  c2 put \"b\" -> ok      [-]",
        "  c3 get -> ok \"a\"          [-]",
    ];
    for line in expected_lines {
        assert!(
            report.lines().any(|l| l == line),
            "missing {line:?} in\n{report}"
        );
    }
}
