//! The history of a test: every invocation and completion of every client operation, and every
//! fault the nemesis started or healed, in the order the harness observed them.
//!
//! Conventions (Jepsen's): a client process has at most one operation outstanding; its invocation
//! is followed by exactly one completion of type `ok` (it happened), `fail` (it certainly did not
//! happen) or `info` (unknown: it timed out or the connection broke, so it may have happened at
//! any time after its invocation). A process that got `info` never issues another operation; the
//! worker continues as a new process number. Nemesis events use the process `"nemesis"` and come
//! in start/stop pairs. `index` is the position in the history; `time_ns` is nanoseconds since
//! the test began, from the harness's monotonic clock.
//!
//! On disk a history is JSON Lines (`history.jsonl`), one event per line.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// Who issued an event: a client process, or the nemesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    /// A client process.
    Client(u64),
    /// The fault injector.
    #[serde(with = "nemesis_name")]
    Nemesis,
}

mod nemesis_name {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("nemesis")
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let name = String::deserialize(d)?;
        if name == "nemesis" { Ok(()) } else { Err(serde::de::Error::custom(format!("unknown process {name:?}"))) }
    }
}

/// What an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A client began an operation (or the nemesis began a fault).
    Invoke,
    /// The operation completed and took effect (the nemesis: the fault is in place or healed).
    Ok,
    /// The operation certainly did not take effect.
    Fail,
    /// The outcome is unknown: the operation may or may not have taken effect.
    Info,
}

/// One micro-operation of an append-workload transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Mop {
    /// Append `value` to the list at `key`.
    Append {
        /// The key.
        key: u64,
        /// The value appended; unique per key across the whole test.
        value: u64,
    },
    /// Read the list at `key`: `None` in the invocation, the list read (empty if absent) in an
    /// `ok` completion.
    Read {
        /// The key.
        key: u64,
        /// The list read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Vec<u64>>,
    },
}

/// What a watcher watches, and how (the watch workload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSpec {
    /// First key watched (keys are numbers; the etcd keys sort in the same order).
    pub from_key: u64,
    /// One past the last key watched.
    pub to_key: u64,
    /// Revision the watch starts at (inclusive); 0 means "from the next revision".
    pub start_revision: i64,
    /// Whether events carry the key's previous value.
    pub prev_kv: bool,
    /// Put events are filtered out.
    pub no_put: bool,
    /// Delete events are filtered out.
    pub no_delete: bool,
    /// Whether progress notifications were requested.
    pub progress_notify: bool,
    /// The reference watch: every key from revision 1, opened after the cluster recovered, whose
    /// events are taken as the true sequence of changes.
    #[serde(default)]
    pub reference: bool,
}

/// One event a watcher received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// True for a delete, false for a put.
    pub delete: bool,
    /// The key.
    pub key: u64,
    /// The value put (`None` for a delete).
    #[serde(default)]
    pub value: Option<u64>,
    /// The key's create revision (0 for a delete).
    pub create_revision: i64,
    /// The revision of this change.
    pub mod_revision: i64,
    /// The key's version after the change (0 for a delete).
    pub version: i64,
    /// With `prev_kv`: the key's previous value (`None` when it did not exist, or without
    /// `prev_kv`).
    #[serde(default)]
    pub prev_value: Option<u64>,
    /// With `prev_kv`: the previous value's mod revision.
    #[serde(default)]
    pub prev_mod_revision: Option<i64>,
}

/// One response on a watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    /// The header revision.
    pub revision: i64,
    /// The events, in order; empty for a progress notification.
    pub events: Vec<WatchEvent>,
    /// Set when the server canceled the watch.
    #[serde(default)]
    pub canceled: bool,
    /// Set with `canceled` when the start revision was compacted.
    #[serde(default)]
    pub compact_revision: i64,
}

/// A fault the nemesis injects or heals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The fault's kind: `kill`, `pause`, `partition`, `clock`, `member`.
    pub kind: String,
    /// The members affected, by name.
    pub targets: Vec<String>,
    /// Human-readable details (e.g. the partition's components).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The operation an event is about. Invocations carry the arguments; `ok` completions carry the
/// results as well (a read's value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// Register: read `key`; the completion's `value` is what was read (`None`: no such key).
    Read {
        /// The key.
        key: u64,
        /// The value read.
        #[serde(default)]
        value: Option<u64>,
    },
    /// Register: write `value` to `key`. Values are unique per key.
    Write {
        /// The key.
        key: u64,
        /// The value written.
        value: u64,
    },
    /// Register: set `key` to `to` if it holds `from`; `fail` when it did not hold `from`.
    Cas {
        /// The key.
        key: u64,
        /// The value expected.
        from: u64,
        /// The value written.
        to: u64,
    },
    /// Watch workload: put `value` at `key`; the `ok` completion carries the revision.
    Put {
        /// The key.
        key: u64,
        /// The value; unique across the test.
        value: u64,
        /// The revision of the put.
        #[serde(default)]
        revision: Option<i64>,
    },
    /// Watch workload: delete `key`; the `ok` completion carries the revision and whether a key
    /// was deleted (a delete of a missing key changes nothing and makes no event).
    Delete {
        /// The key.
        key: u64,
        /// The header revision of the response.
        #[serde(default)]
        revision: Option<i64>,
        /// Whether the key existed.
        #[serde(default)]
        deleted: Option<bool>,
    },
    /// Watch workload: one watch stream from creation until it ended (the worker hung up, the
    /// member failed, or the server canceled it). The invocation is the moment the create request
    /// was sent; an `ok` completion carries every response received, in order, and is recorded
    /// whether or not the stream ended cleanly (what was received was received); `fail` means
    /// the watch was never confirmed created.
    Watch {
        /// What was watched.
        spec: WatchSpec,
        /// The responses received (in the completion).
        #[serde(default)]
        responses: Option<Vec<WatchResponse>>,
    },
    /// Append: a transaction of micro-operations, all or nothing.
    Txn {
        /// The micro-operations, in order.
        mops: Vec<Mop>,
    },
    /// Lease/lock workload: grant a lease of `ttl_s` seconds; the `ok` completion carries its id.
    Grant {
        /// The TTL asked for, in seconds.
        ttl_s: i64,
        /// The lease's id.
        #[serde(default)]
        lease: Option<i64>,
    },
    /// Lease/lock: one keep-alive of `lease`, made by the lease's keep-alive process; the `ok`
    /// completion carries the TTL the server answered (`<= 0`: the lease no longer exists).
    KeepAlive {
        /// The lease.
        lease: i64,
        /// The TTL answered, in seconds.
        #[serde(default)]
        ttl: Option<i64>,
    },
    /// Lease/lock: acquire lock number `lock` with `lease` (etcd's Lock). The `ok` completion
    /// carries the lock key, its create revision (the holder's fencing token) and a revision at
    /// or after the one at which the lock was granted (that of a read made once Lock returned).
    Acquire {
        /// The lock's number.
        lock: u64,
        /// The lease the lock key is attached to.
        lease: i64,
        /// The lock key.
        #[serde(default)]
        key: Option<String>,
        /// The key's create revision.
        #[serde(default)]
        fence: Option<i64>,
        /// A revision at or after the grant.
        #[serde(default)]
        revision: Option<i64>,
    },
    /// Lease/lock: as the holder of `fence`, write to the lock's resource in a transaction
    /// guarded by the lock key still having that create revision. The `ok` completion says
    /// whether the guard held (`applied`) and carries the transaction's revision.
    Fenced {
        /// The lock's number.
        lock: u64,
        /// The holder's lease.
        lease: i64,
        /// The lock key.
        key: String,
        /// The holder's fencing token.
        fence: i64,
        /// Whether the guard held and the write happened.
        #[serde(default)]
        applied: Option<bool>,
        /// The transaction's revision (the header revision when it did not apply).
        #[serde(default)]
        revision: Option<i64>,
    },
    /// Lease/lock: release the lock (etcd's Unlock of `key`); `ok` carries the revision.
    Release {
        /// The lock's number.
        lock: u64,
        /// The lock key.
        key: String,
        /// The holder's fencing token.
        fence: i64,
        /// The revision of the response.
        #[serde(default)]
        revision: Option<i64>,
    },
    /// Lease/lock: revoke `lease`.
    Revoke {
        /// The lease.
        lease: i64,
    },
    /// Lease/lock: the worker stopped keeping `lease` alive without revoking it; from then on it
    /// must expire. A marker: no request is sent, and it completes `ok` at once.
    Abandon {
        /// The lease.
        lease: i64,
    },
    /// Lease/lock, after recovery and after every lease went unrefreshed for longer than its
    /// TTL: the leases that still exist (etcd's LeaseLeases); `ok` carries them.
    Leases {
        /// The leases listed.
        #[serde(default)]
        ids: Option<Vec<i64>>,
    },
    /// Nemesis: a fault begins (invoke) or has been put in place (ok).
    Start(Fault),
    /// Nemesis: a fault is healed.
    Stop(Fault),
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history, from 0.
    pub index: usize,
    /// Nanoseconds since the test began.
    pub time_ns: u64,
    /// Who.
    pub process: Process,
    /// Invocation or completion.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// What.
    #[serde(flatten)]
    pub op: Op,
    /// The member the client sent the operation to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why an operation failed or is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An invocation with its completion (`None` when the history ended first, which counts as
/// `info`).
#[derive(Clone, Copy, Debug)]
pub struct Pair<'a> {
    /// The invocation.
    pub invoke: &'a Event,
    /// The completion.
    pub complete: Option<&'a Event>,
}

impl Pair<'_> {
    /// The completion's type; a missing completion is `info`.
    pub fn outcome(&self) -> EventType {
        self.complete.map_or(EventType::Info, |c| c.kind)
    }
}

/// Errors reading or interpreting a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file could not be read or written.
    #[error("history I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a valid event.
    #[error("history line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The events break the conventions above (e.g. a completion with no invocation).
    #[error("history event {index}: {reason}")]
    Malformed {
        /// The event's index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A whole history, in order.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The events; `events[i].index == i`.
    pub events: Vec<Event>,
}

impl History {
    /// Reads JSON Lines.
    pub fn read(reader: impl BufRead) -> Result<Self, HistoryError> {
        let mut events = Vec::new();
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let event: Event = serde_json::from_str(&line)
                .map_err(|err| HistoryError::Parse { line: n + 1, reason: err.to_string() })?;
            events.push(event);
        }
        Ok(Self { events })
    }

    /// Writes JSON Lines.
    pub fn write(&self, mut writer: impl Write) -> Result<(), HistoryError> {
        for event in &self.events {
            serde_json::to_writer(&mut writer, event).map_err(std::io::Error::from)?;
            writer.write_all(b"\n")?;
        }
        writer.flush()?;
        Ok(())
    }

    /// Pairs every invocation with its process's next completion, in invocation order. Checks
    /// the conventions: one outstanding operation per process, completions match invocations.
    pub fn pairs(&self) -> Result<Vec<Pair<'_>>, HistoryError> {
        let mut open: HashMap<Process, usize> = HashMap::new();
        let mut pairs: Vec<Pair<'_>> = Vec::new();
        for (i, event) in self.events.iter().enumerate() {
            if event.index != i {
                return Err(HistoryError::Malformed { index: event.index, reason: format!("found at position {i}") });
            }
            match event.kind {
                EventType::Invoke => {
                    if open.contains_key(&event.process) {
                        return Err(HistoryError::Malformed {
                            index: i,
                            reason: format!("{:?} invoked while its previous operation is outstanding", event.process),
                        });
                    }
                    open.insert(event.process, pairs.len());
                    pairs.push(Pair { invoke: event, complete: None });
                }
                _ => {
                    let Some(slot) = open.remove(&event.process) else {
                        return Err(HistoryError::Malformed {
                            index: i,
                            reason: format!("completion for {:?}, which has nothing outstanding", event.process),
                        });
                    };
                    if std::mem::discriminant(&pairs[slot].invoke.op) != std::mem::discriminant(&event.op) {
                        return Err(HistoryError::Malformed {
                            index: i,
                            reason: "completion of a different operation than was invoked".into(),
                        });
                    }
                    pairs[slot].complete = Some(event);
                }
            }
        }
        Ok(pairs)
    }

    /// Client operations only (no nemesis events), paired.
    pub fn client_pairs(&self) -> Result<Vec<Pair<'_>>, HistoryError> {
        Ok(self.pairs()?.into_iter().filter(|p| p.invoke.process != Process::Nemesis).collect())
    }
}

/// Collects events as a test runs, numbering them and stamping their times. Shared by every
/// worker behind a mutex held only to push one event.
#[derive(Debug)]
pub struct Recorder {
    start: std::time::Instant,
    events: std::sync::Mutex<Vec<Event>>,
    /// Client operations recorded as `Ok` so far, readable without the events' lock (the run's
    /// timer polls it to decide whether the workload has done enough).
    client_ok: std::sync::atomic::AtomicUsize,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            events: std::sync::Mutex::new(Vec::new()),
            client_ok: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Nanoseconds since the start.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends an event; returns its index.
    pub fn record(
        &self,
        process: Process,
        kind: EventType,
        op: Op,
        node: Option<String>,
        error: Option<String>,
    ) -> usize {
        if kind == EventType::Ok && process != Process::Nemesis {
            self.client_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut events = self.events.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = events.len();
        // The time is read under the lock so that times never decrease along the history.
        let time_ns = self.now_ns();
        events.push(Event { index, time_ns, process, kind, op, node, error });
        index
    }

    /// How many client operations have completed `Ok` so far.
    pub fn client_ok(&self) -> usize {
        self.client_ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The history so far.
    pub fn history(&self) -> History {
        History { events: self.events.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone() }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_operations_that_succeeded_count_toward_min_ok() {
        let recorder = Recorder::new();
        let read = |value| Op::Read { key: 1, value };
        recorder.record(Process::Client(0), EventType::Invoke, read(None), None, None);
        recorder.record(Process::Client(0), EventType::Ok, read(Some(1)), None, None);
        recorder.record(Process::Client(1), EventType::Invoke, read(None), None, None);
        recorder.record(Process::Client(1), EventType::Fail, read(None), None, Some("refused".into()));
        recorder.record(Process::Client(2), EventType::Invoke, read(None), None, None);
        recorder.record(Process::Client(2), EventType::Info, read(None), None, Some("timed out".into()));
        let fault = Fault { kind: "kill".into(), targets: vec!["n2".into()], detail: String::new() };
        recorder.record(Process::Nemesis, EventType::Invoke, Op::Start(fault.clone()), None, None);
        recorder.record(Process::Nemesis, EventType::Ok, Op::Start(fault), None, None);
        assert_eq!(recorder.client_ok(), 1);
    }

    #[test]
    fn events_round_trip_through_json_lines() {
        let recorder = Recorder::new();
        recorder.record(
            Process::Client(0),
            EventType::Invoke,
            Op::Read { key: 1, value: None },
            Some("n1".into()),
            None,
        );
        let fault = Fault { kind: "kill".into(), targets: vec!["n2".into()], detail: String::new() };
        recorder.record(Process::Nemesis, EventType::Invoke, Op::Start(fault.clone()), None, None);
        recorder.record(
            Process::Client(0),
            EventType::Ok,
            Op::Read { key: 1, value: Some(7) },
            Some("n1".into()),
            None,
        );
        recorder.record(Process::Nemesis, EventType::Ok, Op::Start(fault), None, None);
        let mops = vec![Mop::Append { key: 1, value: 2 }, Mop::Read { key: 1, value: None }];
        recorder.record(Process::Client(1), EventType::Invoke, Op::Txn { mops }, None, None);
        let history = recorder.history();
        let mut bytes = Vec::new();
        history.write(&mut bytes).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.lines().next().unwrap().contains(r#""f":"read""#), "{text}");
        assert!(text.contains(r#""process":"nemesis""#), "{text}");
        let back = History::read(&bytes[..]).unwrap();
        assert_eq!(back.events, history.events);
        let pairs = back.pairs().unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0].outcome(), EventType::Ok);
        assert_eq!(pairs[2].outcome(), EventType::Info, "an unfinished operation counts as unknown");
    }

    #[test]
    fn a_second_invocation_while_one_is_outstanding_is_malformed() {
        let recorder = Recorder::new();
        recorder.record(Process::Client(0), EventType::Invoke, Op::Read { key: 1, value: None }, None, None);
        recorder.record(Process::Client(0), EventType::Invoke, Op::Read { key: 1, value: None }, None, None);
        assert!(matches!(recorder.history().pairs(), Err(HistoryError::Malformed { index: 1, .. })));
    }
}
