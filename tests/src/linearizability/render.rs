//! A history as a person reads it: a table sorted by invocation, and a timeline of overlaps.

use std::fmt::Write as _;

use super::history::{CasResult, Op, Operation, Outcome, Status};

/// Bytes as a quoted string when they are printable text, else as hex.
pub(super) fn bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => {
            let mut hex = String::from("0x");
            for byte in b {
                let _ = write!(hex, "{byte:02x}");
            }
            hex
        }
    }
}

fn value(v: Option<&[u8]>) -> String {
    v.map_or_else(|| "absent".to_owned(), bytes)
}

/// The operation without its key or outcome: `put "a"`, `cas "a" -> absent`.
pub(super) fn operation(op: &Op) -> String {
    match op {
        Op::Put { value: v, .. } => format!("put {}", bytes(v)),
        Op::Get { .. } => "get".to_owned(),
        Op::Delete { .. } => "delete".to_owned(),
        Op::CompareAndSwap { expected, new, .. } => format!(
            "cas {} -> {}",
            value(expected.as_deref()),
            value(new.as_deref())
        ),
    }
}

pub(super) fn outcome(op: &Op) -> String {
    fn status<T>(o: &Outcome<T>, ok: impl FnOnce(&T) -> String) -> String {
        match o {
            Outcome::Ok(r) => ok(r),
            Outcome::Failed => "failed".to_owned(),
            Outcome::Unknown => "unknown".to_owned(),
        }
    }
    match op {
        Op::Put { outcome, .. } => status(outcome, |()| "ok".to_owned()),
        Op::Get { outcome, .. } => status(outcome, |v| format!("ok {}", value(v.as_deref()))),
        Op::Delete { outcome, .. } => status(outcome, |&existed| {
            if existed {
                "ok existed"
            } else {
                "ok not found"
            }
            .to_owned()
        }),
        Op::CompareAndSwap { outcome, .. } => status(outcome, |r| match r {
            CasResult::Swapped => "ok swapped".to_owned(),
            CasResult::CompareFailed { current } => {
                format!("ok compare failed, held {}", value(current.as_deref()))
            }
        }),
    }
}

/// One line about an operation, key included:
/// `client 3: get on "x" -> ok "a" (invoked at 40 ns, completed at 50 ns)`.
pub(super) fn one_line(o: &Operation) -> String {
    format!(
        "client {}: {} on {} -> {} (invoked at {} ns, completed at {} ns)",
        o.client,
        operation(&o.op),
        bytes(o.op.key()),
        outcome(&o.op),
        o.invoked_ns,
        o.completed_ns
    )
}

/// A table of `ops` (sorted by invocation), one row each with a mark and a note from `annotate`.
pub(super) fn table(
    ops: &[Operation],
    annotate: impl Fn(&Operation) -> (&'static str, &'static str),
) -> String {
    let rows: Vec<[String; 7]> = ops
        .iter()
        .map(|o| {
            let (mark, note) = annotate(o);
            [
                mark.to_owned(),
                o.invoked_ns.to_string(),
                o.completed_ns.to_string(),
                o.client.to_string(),
                operation(&o.op),
                outcome(&o.op),
                note.to_owned(),
            ]
        })
        .collect();
    let header = [
        "",
        "invoked",
        "completed",
        "client",
        "operation",
        "outcome",
        "",
    ]
    .map(String::from);
    let mut widths = [0usize; 7];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "  {:<w0$} {:>w1$}  {:>w2$}  {:>w3$}  {:<w4$}  {:<w5$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
            w5 = widths[5],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The most distinct instants a timeline is drawn for; beyond that it would not fit a screen.
const TIMELINE_INSTANTS_MAX: usize = 60;

/// Each operation as a bar over the distinct instants of the excerpt, so overlaps show at a
/// glance: `[---]` completed, `[--->` unknown (may take effect until the end), `[...]` failed.
pub(super) fn timeline(ops: &[Operation]) -> Option<String> {
    let finite = |o: &Operation| !matches!(o.op.status(), Status::Unknown);
    let mut instants: Vec<u64> = ops
        .iter()
        .flat_map(|o| [Some(o.invoked_ns), finite(o).then_some(o.completed_ns)])
        .flatten()
        .collect();
    instants.sort_unstable();
    instants.dedup();
    if instants.len() > TIMELINE_INSTANTS_MAX {
        return None;
    }
    let column = |t: u64| 2 * instants.partition_point(|&i| i < t);
    let width = 2 * instants.len() + 1;
    let labels: Vec<String> = ops
        .iter()
        .map(|o| format!("c{} {} -> {}", o.client, operation(&o.op), outcome(&o.op)))
        .collect();
    let label_width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (o, label) in ops.iter().zip(&labels) {
        let start = column(o.invoked_ns);
        let mut bar = vec![' '; width];
        if finite(o) {
            let end = column(o.completed_ns);
            let fill = if o.op.status() == Status::Failed {
                '.'
            } else {
                '-'
            };
            bar[start..=end].fill(fill);
            bar[start] = '[';
            bar[end] = if start == end { '|' } else { ']' };
        } else {
            bar[start..].fill('-');
            bar[start] = '[';
            bar[width - 1] = '>';
        }
        let bar: String = bar.into_iter().collect();
        let _ = writeln!(out, "  {label:<label_width$}  {}", bar.trim_end());
    }
    Some(out)
}
